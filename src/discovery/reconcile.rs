//! What a lookup's answer makes of an entry's servers, as table commands.
//! Pure: the table as published and what this resolver remembers in, the
//! commands out; the writer (`Table::apply_batch_as`) does the rest.
//!
//! The rules: an address that appears is added (it starts `checking` when the
//! upstream has a check: the plan does that for every added server); one that
//! goes away is set `drain`, and removed once its requests have finished
//! (`run.rs` waits for that); one that stays keeps its id, admin state and
//! counters — an operator's `down` sticks. Only servers of this entry's origin
//! are touched; an address another door already put in the upstream is left
//! to it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use super::entry::{Entry, Target};
use super::lookup::Answer;
use crate::upstream::{AdminState, Command, Origin, Server, ServerPatch, ServerRef, ServerSpec};

/// What the resolver of one entry keeps between lookups.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    /// Servers this resolver set draining because their address left the
    /// records (an operator's `drain` is not in here, so it is never undone).
    pub draining: BTreeSet<u32>,
    /// Each address's weight and tier in the last good answer: a server's
    /// weight follows its record when the record changes, and an operator's
    /// weight stays until then.
    pub last: BTreeMap<SocketAddr, (u32, bool)>,
    /// The entry's parameters changed (a reload): its servers take them at
    /// the next answer.
    pub retemplate: bool,
}

/// One reconciliation.
#[derive(Debug, Default)]
pub struct Step {
    pub commands: Vec<Command>,
    /// Servers set (or found) out of the records: to remove once idle.
    pub drain: Vec<u32>,
    /// Servers of ours back in the records, taken out of `draining`.
    pub revived: Vec<u32>,
    /// Addresses that another door already has in the upstream.
    pub skipped: Vec<SocketAddr>,
}

/// The commands that bring `servers` (one upstream's, as published) in line
/// with `answer` for `entry`. `backups`: whether the upstream takes backup
/// servers (a hash balance does not; SRV backups are then left out).
pub fn step(
    entry: &Entry,
    servers: &[Arc<Server>],
    answer: &Answer,
    memory: &Memory,
    backups: bool,
) -> Step {
    let origin = Origin::dns(&entry.key);
    let mine: Vec<&Arc<Server>> = servers.iter().filter(|s| s.origin == origin).collect();
    let wanted: BTreeMap<String, &Target> = answer
        .targets
        .iter()
        .filter(|t| backups || !t.backup)
        .map(|t| (t.addr.to_string(), t))
        .collect();
    let mut out = Step::default();
    for (addr, t) in &wanted {
        match mine.iter().find(|s| s.addr == *addr) {
            Some(s) => keep(entry, s, t, memory, &mut out),
            None if servers.iter().any(|s| s.addr == *addr) => out.skipped.push(t.addr),
            None => out.commands.push(Command::Add {
                upstream: entry.upstream.clone(),
                server: ServerSpec::at(entry.server(t), t.addr, origin.clone()),
            }),
        }
    }
    for s in mine.iter().filter(|s| !wanted.contains_key(&s.addr)) {
        if memory.draining.contains(&s.id) {
            continue;
        }
        if s.state == AdminState::Up {
            out.commands.push(Command::SetState {
                upstream: entry.upstream.clone(),
                server: ServerRef::Id(s.id),
                state: AdminState::Drain,
            });
        }
        out.drain.push(s.id);
    }
    out
}

/// A server of ours that is still in the records: back to `up` if this
/// resolver drained it, its weight and tier as its record says if the record
/// changed.
fn keep(entry: &Entry, s: &Server, t: &Target, memory: &Memory, out: &mut Step) {
    let mut patch = ServerPatch::default();
    if memory.draining.contains(&s.id) {
        if s.state == AdminState::Drain {
            patch.state = Some(AdminState::Up);
        }
        out.revived.push(s.id);
    }
    let record_changed = memory.last.get(&t.addr) != Some(&(t.weight, t.backup));
    if record_changed {
        patch.weight = (s.weight != t.weight).then_some(t.weight);
        patch.backup = (s.backup != t.backup).then_some(t.backup);
    }
    if memory.retemplate {
        let want = &entry.template;
        patch.max_conns = (s.max_conns != want.max_conns).then_some(want.max_conns);
        patch.max_fails = (s.max_fails != want.max_fails).then_some(want.max_fails);
        patch.fail_timeout = (s.fail_timeout != want.fail_timeout).then_some(want.fail_timeout);
        patch.slow_start = (s.slow_start != want.slow_start).then_some(want.slow_start);
    }
    if !patch.is_empty() {
        out.commands.push(Command::Patch {
            upstream: entry.upstream.clone(),
            server: ServerRef::Id(s.id),
            patch,
        });
    }
}

/// The removal of a server this resolver drained, now idle: only if it is
/// still ours, still out of the records and still draining-by-us.
pub fn removal(
    entry: &Entry,
    servers: &[Arc<Server>],
    memory: &Memory,
    id: u32,
) -> Option<Command> {
    if !memory.draining.contains(&id) {
        return None;
    }
    let s = servers.iter().find(|s| s.id == id)?;
    let back = memory.last.contains_key(&s.sockaddr);
    if s.origin != Origin::dns(&entry.key) || back {
        return None;
    }
    Some(Command::Remove {
        upstream: entry.upstream.clone(),
        server: ServerRef::Id(id),
    })
}

/// Commands that remove every server of `upstream` (`servers`) that came
/// from a DNS entry not among `keys`, the upstream's entries now configured
/// (an entry left the file, during a reload or while the process was down).
pub fn orphans(upstream: &str, keys: &BTreeSet<&str>, servers: &[Arc<Server>]) -> Vec<Command> {
    servers
        .iter()
        .filter(|s| matches!(&s.origin, Origin::Dns(key) if !keys.contains(&**key)))
        .map(|s| Command::Remove {
            upstream: upstream.to_string(),
            server: ServerRef::Id(s.id),
        })
        .collect()
}

impl Memory {
    /// After `step`'s commands were applied: what is draining now, and the
    /// answer they were made from.
    pub fn applied(&mut self, step: &Step, answer: &Answer) {
        for id in &step.revived {
            self.draining.remove(id);
        }
        self.draining.extend(step.drain.iter().copied());
        self.last = answer
            .targets
            .iter()
            .map(|t| (t.addr, (t.weight, t.backup)))
            .collect();
        self.retemplate = false;
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
