//! Parser. Filled in separately.
