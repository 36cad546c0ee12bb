//! A command's rkyv bytes, as the Raft log holds them: they decode to a
//! command that re-encodes to itself, or fail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_schema::command::Command;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(cmd) = Command::from_bytes(bytes) {
        let _ = cmd.check_bounds();
        assert_eq!(Command::from_bytes(&cmd.to_bytes()).unwrap(), cmd);
    }
});
