//! The Redis client setup.

use std::time::Duration;

use fred::clients::Client;
use fred::error::Error;
use fred::interfaces::ClientLike;
use fred::types::config::{Config, ReconnectPolicy};

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// A command that has no answer within this time fails, so a Redis
    /// that is down never blocks the caller for longer.
    pub command_timeout: Duration,
    /// Longest pause between reconnection attempts.
    pub max_reconnect_delay: Duration,
}

impl RedisOptions {
    /// Options for `url` with a 2 s command timeout and reconnect pauses of
    /// 100 ms growing to 2 s.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            command_timeout: Duration::from_secs(2),
            max_reconnect_delay: Duration::from_secs(2),
        }
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A client that connects in the background and reconnects forever.
///
/// It does not wait for the first connection: a node must start, and keep
/// serving, while Redis is down. Commands sent while disconnected wait at
/// most `command_timeout` and then fail.
///
/// # Errors
///
/// fred's error when the URL cannot be parsed.
pub fn connect(options: &RedisOptions) -> Result<Client, Error> {
    let mut config = Config::from_url(&options.url)?;
    config.fail_fast = false;
    let client = fred::types::Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            100,
            millis_u32(options.max_reconnect_delay),
            2,
        ))
        .with_performance_config(|performance| {
            performance.default_command_timeout = options.command_timeout;
        })
        .with_connection_config(|connection| {
            connection.connection_timeout = options.command_timeout;
            connection.internal_command_timeout = options.command_timeout;
        })
        .build()?;
    // The connection task runs until the client quits; its handle is not
    // needed because every command reports its own failure.
    drop(client.connect());
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_that_does_not_parse_is_refused_before_connecting() {
        assert!(connect(&RedisOptions::new("redis://127.0.0.1:not-a-port")).is_err());
    }

    #[test]
    fn reconnect_pauses_beyond_u32_millis_saturate() {
        assert_eq!(millis_u32(Duration::from_secs(u64::MAX)), u32::MAX);
        assert_eq!(millis_u32(Duration::from_millis(250)), 250);
    }
}
