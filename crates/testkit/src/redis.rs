use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::Config;
use fred::types::{ClusterHash, CustomCommand};

use crate::error::NoAnswer;
use crate::{Endpoints, Error, Service, unique_name};

/// How long connecting to Redis may take before the test is told to start the stack.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected Redis client and a key prefix no other test uses.
///
/// Redis in the stack keeps nothing on disk and every test writes only under
/// its own prefix, so tests share one server safely. Keys are left in place on
/// drop; [`cleanup`](Self::cleanup) deletes them.
#[derive(Debug)]
pub struct TestRedis {
    client: Client,
    prefix: String,
}

impl TestRedis {
    /// Connects to `endpoints.redis_url` and picks a fresh prefix.
    ///
    /// The client does not reconnect on its own: a test that restarts Redis
    /// builds its own client from [`Endpoints::redis_url`].
    ///
    /// # Errors
    ///
    /// [`Error::BadAddress`] for a URL that is not a Redis URL,
    /// [`Error::Unreachable`] when Redis does not answer.
    pub async fn connect(endpoints: &Endpoints) -> Result<Self, Error> {
        let address = endpoints.redis_url.as_str();
        let config = Config::from_url(address).map_err(|source| Error::BadAddress {
            service: Service::Redis,
            address: address.to_owned(),
            source: source.into(),
        })?;
        let client = fred::types::Builder::from_config(config)
            .with_connection_config(|connection| {
                connection.connection_timeout = CONNECT_TIMEOUT;
                connection.internal_command_timeout = CONNECT_TIMEOUT;
            })
            .build()
            .map_err(|source| Error::unreachable(Service::Redis, address, source))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, client.init()).await {
            Ok(Ok(_connection_task)) => {}
            Ok(Err(source)) => return Err(Error::unreachable(Service::Redis, address, source)),
            Err(_elapsed) => {
                return Err(Error::unreachable(
                    Service::Redis,
                    address,
                    NoAnswer(CONNECT_TIMEOUT),
                ));
            }
        }
        Ok(Self {
            client,
            prefix: format!("{}:", unique_name("redis")),
        })
    }

    /// The connected client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// This test's key prefix; it ends with `:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `name` under this test's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Deletes every key under this test's prefix and closes the connection.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] when listing or deleting the keys fails.
    pub async fn cleanup(self) -> Result<(), Error> {
        // KEYS blocks the server while it scans, which is fine for a test
        // Redis and keeps this free of cursor bookkeeping.
        let keys: Vec<String> = self
            .client
            .custom(
                CustomCommand::new_static("KEYS", ClusterHash::FirstKey, false),
                vec![format!("{}*", glob_escape(&self.prefix))],
            )
            .await?;
        if !keys.is_empty() {
            self.client.del::<i64, _>(keys).await?;
        }
        self.client.quit().await?;
        Ok(())
    }
}

/// Escapes Redis glob characters so the prefix matches only itself.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_escape_leaves_plain_names_alone() {
        assert_eq!(glob_escape("rtc-redis-1-0-abcd:"), "rtc-redis-1-0-abcd:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
