#![forbid(unsafe_code)]
pub mod auth;
pub mod upstream;
