//! API keys for third parties and legacy jobs: `hwk_<id>_<secret>`.
//!
//! The domain side only (no HTTP, no protobuf): [`format`] makes and reads keys and
//! their digests, [`file`] reads a key file (YAML, only digests, never keys) and
//! [`store`] answers "which entry is this key, and is it valid now?". The serving side
//! (which header a key arrives in, hot reload) is `authn/apikey.rs`.

pub mod file;
pub mod format;
pub mod store;

pub use file::{KeyEntry, KeyFileError};
pub use format::{Digest, FormatError, NewKey, PresentedKey};
pub use store::{KeyError, KeySet};
