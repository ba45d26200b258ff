//! Tests of the config parser: the full example, and one broken file per kind of
//! problem, checked for message and place.
