//! Redis for the rest of the workspace: the one Lua script runner and the
//! one client setup.
//!
//! - [`Script`]: a Lua script, written as a `const`, run with
//!   [`Script::run`] on a fred [`Client`](fred::clients::Client).
//! - [`connect`] with [`RedisOptions`]: a client that connects in the
//!   background and reconnects forever, every command bounded by a timeout.
//!
//! # What it promises
//!
//! - **One way to run a script.** Every script is sent whole with `EVAL`
//!   as `source, key count, keys..., args...`, and in Redis Cluster is
//!   routed by its first key (so all keys of one script must share a hash
//!   slot: put a hash tag in their prefix). The scripts of this workspace
//!   are a few lines, so sending them each time costs less than an
//!   `EVALSHA` that misses the script cache and is sent again.
//! - **Nothing is interpreted.** The reply is handed back as fred's
//!   [`Value`](fred::types::Value) and a failure as fred's
//!   [`Error`](fred::error::Error), so each caller reads replies and maps
//!   failures into its own error type exactly as it would for any other
//!   command.
//! - **Redis down never blocks for long.** A client from [`connect`] does
//!   not wait for its first connection; commands sent while it is
//!   disconnected wait at most [`RedisOptions::command_timeout`] and fail.
//!
//! # Example
//!
//! ```no_run
//! use rtc_redis::{RedisOptions, Script, connect};
//!
//! /// KEYS: counter. ARGV: step. Returns the new count.
//! const BUMP: Script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
//!
//! # async fn example() -> Result<(), fred::error::Error> {
//! let client = connect(&RedisOptions::new("redis://127.0.0.1:6379"))?;
//! let count = BUMP.run(&client, ["rtc:example:count"], ["2"]).await?;
//! # let _ = count;
//! # Ok(())
//! # }
//! ```

mod client;
mod script;

pub use client::{RedisOptions, connect};
pub use script::Script;
