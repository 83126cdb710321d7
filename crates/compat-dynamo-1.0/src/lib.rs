//! Dev-only compatibility checks; see tests/.
