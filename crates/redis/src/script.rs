//! The Lua script runner.

use fred::clients::Client;
use fred::error::Error;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};

/// A Lua script run atomically by Redis.
///
/// Declare each script as a `const` with a doc comment naming its `KEYS`
/// and `ARGV`, and run it with [`run`](Self::run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Script {
    source: &'static str,
}

impl Script {
    /// The script with Lua source `source`.
    pub const fn new(source: &'static str) -> Self {
        Self { source }
    }

    /// Its Lua source.
    pub const fn source(&self) -> &'static str {
        self.source
    }

    /// Runs the script with `keys` and `args` (`EVAL`; routed by the first
    /// key) and returns Redis's reply as it came.
    ///
    /// # Errors
    ///
    /// fred's error when the command cannot be sent, times out, or Redis
    /// answers with an error (the script failed or called
    /// `redis.error_reply`).
    pub async fn run<K, A>(
        &self,
        client: &Client,
        keys: impl IntoIterator<Item = K>,
        args: impl IntoIterator<Item = A>,
    ) -> Result<Value, Error>
    where
        K: Into<Value>,
        A: Into<Value>,
    {
        let eval = self.eval_args(keys, args);
        client
            .custom(
                CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false),
                eval,
            )
            .await
    }

    /// The arguments of `EVAL`: source, key count, keys, args.
    fn eval_args<K, A>(
        &self,
        keys: impl IntoIterator<Item = K>,
        args: impl IntoIterator<Item = A>,
    ) -> Vec<Value>
    where
        K: Into<Value>,
        A: Into<Value>,
    {
        let (keys, args) = (keys.into_iter(), args.into_iter());
        let mut eval = Vec::with_capacity(2 + keys.size_hint().0 + args.size_hint().0);
        eval.push(Value::from(self.source));
        // The key count is known once the keys are in.
        eval.push(Value::Integer(0));
        eval.extend(keys.map(Into::into));
        let count = eval.len() - 2;
        eval[1] = Value::Integer(i64::try_from(count).unwrap_or(i64::MAX));
        eval.extend(args.map(Into::into));
        eval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO: Script = Script::new("return {KEYS[1], ARGV[1]}");

    #[test]
    fn eval_takes_source_key_count_keys_then_args() {
        let eval = ECHO.eval_args(
            vec!["p:a".to_owned(), "p:b".to_owned()],
            vec![Value::from("node-1"), Value::Bytes(vec![0xff, 0].into())],
        );
        assert_eq!(
            eval,
            vec![
                Value::from(ECHO.source()),
                Value::Integer(2),
                Value::from("p:a"),
                Value::from("p:b"),
                Value::from("node-1"),
                Value::Bytes(vec![0xff, 0].into()),
            ]
        );
    }

    #[test]
    fn a_script_without_keys_or_args_counts_zero_keys() {
        let none: [&str; 0] = [];
        assert_eq!(
            ECHO.eval_args(none, none),
            vec![Value::from(ECHO.source()), Value::Integer(0)]
        );
    }

    #[test]
    fn keys_from_a_lazy_iterator_are_counted() {
        let eval = ECHO.eval_args((0..3).map(|i| format!("k{i}")), ["x"]);
        assert_eq!(eval[1], Value::Integer(3));
        assert_eq!(eval.len(), 2 + 3 + 1);
        assert_eq!(eval[5], Value::from("x"));
    }
}
