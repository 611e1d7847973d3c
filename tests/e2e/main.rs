//! End-to-end tests: they run the `testbed` binary the way a user or CI does, on real
//! processes, and read the artifacts it writes.

mod conformance;
mod inputs;
mod smoke;
mod support;
