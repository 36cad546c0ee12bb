//! The protocol shared by every Quern process: record batches, the framing
//! that carries them through spill files (and, later, the network), and the
//! partition function every node must agree on, and the coordinator's
//! replicated commands.
//!
//! Everything here treats bytes from outside as hostile: decoding checks the
//! frame header, the checksum, rkyv's structural validation and the batch's
//! own invariants before anything is read in place.

pub mod batch;
pub mod command;
pub mod frame;
pub mod partition;

pub use batch::{BatchShape, BatchView, Position, Record, RecordBatch, RunTrailer, ValidBatch};
pub use frame::{Frame, FrameError, FrameKind, FrameReader, write_frame};
pub use partition::partition_of;
