//! The `anetrain` binary's library half: the command line and the file formats it reads and
//! writes, kept here so integration tests can use them.

pub mod cli;
pub mod npy;
