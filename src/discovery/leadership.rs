//! Who writes what DNS finds: the one instance that resolves an upstream's
//! names. A trait, so that `discovery` does not know the fleet (`cluster`
//! decides, `cli` wires the two together).

/// The origin of the resolver's batches, in events and logs.
pub const ORIGIN: &str = "dns";

/// Whether this instance is the one that resolves an upstream's names and
/// writes what it finds. Alone, it always is; in a fleet, the holder of the
/// upstream's lease is (`cluster`), so that N instances do not fight.
pub trait Leadership: Send + Sync + 'static {
    fn is_resolver(&self, upstream: &str) -> bool;
}

/// A single instance: it resolves everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Alone;

impl Leadership for Alone {
    fn is_resolver(&self, _upstream: &str) -> bool {
        true
    }
}
