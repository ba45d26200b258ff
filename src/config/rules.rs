//! The rules of the configuration's types, gathered for the doors that check
//! values one at a time (a JSON field, a form value, a saved number) rather than
//! a whole value with its `validate()`. Each rule is defined beside its type;
//! this file only re-exports them.

pub use super::health_check::{
    DEFAULT_METHOD, DEFAULT_PATH, HTTP_ONLY_KEYS, MIN_COUNT, PORTS, REQUEST_KEYS, STATUSES,
    check_body_regex, check_count, check_header, check_method, check_path, check_port,
    check_positive, check_status, misplaced_keys,
};
pub use super::listener::check_health_uri;
pub use super::server::{check_weight, clamp_weight};
pub use super::upstream::{
    PANIC_THRESHOLDS, check_backup, check_hash_key, check_panic_threshold, check_protocol,
    check_server_name, is_api_name,
};
