//! End-to-end tests: they run the `testbed` binary the way a user or CI does, on real
//! processes, and read the artifacts it writes.

mod compare;
mod conformance;
mod docker;
mod faults;
mod inputs;
mod report;
mod slurm;
mod smoke;
mod support;
mod xmsg;
