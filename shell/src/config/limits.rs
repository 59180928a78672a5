//! How many connections the server accepts (`MAX_CONNECTIONS`), and the open-files arithmetic
//! behind its default and its checks.
//!
//! Every client connection, every upstream agent socket and every store connection is a file
//! descriptor, so `MAX_CONNECTIONS` is derived from the process's open-files limit
//! (`RLIMIT_NOFILE`) when unset, and checked against it (and against `MAX_CALLS`) when set.

use super::parse::int_in;
use super::{Config, ConfigError};

/// Connections kept beside `MAX_CALLS` media streams for webhooks, health checks and
/// scrapes: `MAX_CONNECTIONS` is at least `MAX_CALLS` plus this.
pub const CONNECTIONS_BESIDE_CALLS: usize = 32;

/// Open files kept aside from connections: standard streams, the runtime's epoll and event
/// descriptors, the listener, the REST client's pool, recording downloads (up to four at once,
/// each a socket and a file), trace files being written, DNS lookups.
pub const RESERVED_FILES: u64 = 64;

/// Open files per store connection: an SQLite connection holds the database, its WAL and its
/// shared-memory file (a PostgreSQL connection is one socket).
pub const FILES_PER_STORE_CONNECTION: u64 = 3;

/// The most connections the derived default allows, however high the open-files limit: what
/// an instance needs is about one connection per call plus a few for webhooks, and every open
/// connection costs memory.
pub const MAX_CONNECTIONS_CEILING: usize = 10_000;

/// The soft open-files limit of this process (`RLIMIT_NOFILE`); `None` when unlimited or
/// unknown.
pub fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rlimit::Resource::NOFILE
            .get()
            .ok()
            .map(|(soft, _hard)| soft)
            .filter(|&soft| soft != rlimit::INFINITY)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The default `MAX_CONNECTIONS` for an open-files `limit`: what is left after
/// [`RESERVED_FILES`], the store's files and, with a remote agent, one upstream socket per
/// call (`MAX_CALLS` of them, or one per connection when calls are not limited), at most
/// [`MAX_CONNECTIONS_CEILING`] (or `MAX_CALLS` + [`CONNECTIONS_BESIDE_CALLS`] when that is more).
pub fn derived_max_connections(config: &Config, limit: Option<u64>) -> usize {
    let ceiling = MAX_CONNECTIONS_CEILING.max(config.max_calls + CONNECTIONS_BESIDE_CALLS);
    let Some(limit) = limit else {
        return ceiling;
    };
    let budget = limit.saturating_sub(fixed_files(config));
    let connections = match (config.agent.is_some(), config.max_calls as u64) {
        (false, _) => budget,
        (true, 0) => budget / 2,
        (true, calls) => budget.saturating_sub(calls),
    };
    usize::try_from(connections)
        .unwrap_or(usize::MAX)
        .min(ceiling)
}

/// Open files needed besides client connections and upstream agent sockets.
fn fixed_files(config: &Config) -> u64 {
    RESERVED_FILES + FILES_PER_STORE_CONNECTION * u64::from(config.database_max_connections)
}

/// Open files `max_connections` client connections need at most: the connections, one
/// upstream socket per call with a remote agent, and the fixed share.
fn files_needed(config: &Config, max_connections: usize) -> u64 {
    let upstream = match (config.agent.is_some(), config.max_calls) {
        (false, _) => 0,
        (true, 0) => max_connections,
        (true, calls) => calls.min(max_connections),
    };
    fixed_files(config) + max_connections as u64 + upstream as u64
}

/// `MAX_CONNECTIONS` as given (checked against `MAX_CALLS` and the open-files limit), or
/// derived from the limit.
pub(super) fn max_connections(
    config: &Config,
    value: Option<&str>,
    file_limit: Option<u64>,
) -> Result<usize, ConfigError> {
    let needed = config.max_calls + CONNECTIONS_BESIDE_CALLS;
    let Some(value) = value else {
        let available = derived_max_connections(config, file_limit);
        if available < needed {
            return Err(ConfigError::FileLimitTooLow {
                limit: file_limit.unwrap_or(u64::MAX),
                available,
                needed,
            });
        }
        return Ok(available);
    };
    let max_connections = int_in("MAX_CONNECTIONS", value, 1, 1_000_000)? as usize;
    if config.max_calls > 0 && max_connections < needed {
        return Err(ConfigError::ConnectionsBelowCalls {
            max_connections,
            needed,
        });
    }
    if let Some(limit) = file_limit {
        let needed = files_needed(config, max_connections);
        if needed > limit {
            return Err(ConfigError::ConnectionsOverFileLimit {
                max_connections,
                needed,
                limit,
            });
        }
    }
    Ok(max_connections)
}
