//! The coordinators' API envelope as a replica receives it: any bytes
//! decode to a request (whose command, if a write, decodes and is checked
//! against the bounds) or fail; a reply likewise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_schema::coordinator_api::{self, Reply, Request};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Request::Write(command)) = coordinator_api::decode::<Request>(bytes)
        && let Ok(cmd) = command.decode()
    {
        let _ = cmd.check_bounds();
    }
    let _ = coordinator_api::decode::<Reply>(bytes);
});
