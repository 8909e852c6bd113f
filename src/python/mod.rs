//! The Python binding (the `python` feature): argument conversion, Scrapy's objects, and the
//! hooks that hand outcomes to the ledger. No rule of the crawl is decided here.

pub mod attempt;
pub mod core;
pub mod hooks;
mod identity;
mod route;
mod scrapy;
pub mod settings;
