//! Keel's secrets: the age v1 file format, the encrypted secret store beside a pipeline
//! (`.keel/secrets.age`), and the providers a task's secrets are resolved from.
//!
//! It does not know about tasks, runs or the engine, and it never logs: no value it handles
//! leaves it except through [`Secret::expose`], and every error names what is wrong, never a
//! value.

pub mod age;
