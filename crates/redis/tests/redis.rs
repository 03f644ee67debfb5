//! Scripts against the local stack's Redis (`deploy/local/stack up redis`),
//! on a client from [`rtc_redis::connect`], under the test's own key prefix.

use fred::interfaces::{ClientLike, KeysInterface, ListInterface};
use fred::types::Value;
use rtc_redis::{RedisOptions, Script, connect};
use rtc_testkit::Endpoints;

/// KEYS: string, list. ARGV: value, item. Sets one, pushes onto the other
/// and answers what it saw.
const WRITE_BOTH: Script = Script::new(
    "
redis.call('SET', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
return {#KEYS, #ARGV, redis.call('GET', KEYS[1]), redis.call('LINDEX', KEYS[2], 0)}",
);

/// KEYS: none. ARGV: none. Always fails.
const REFUSE: Script = Script::new("return redis.error_reply('refused on purpose')");

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.as_bytes()),
        _ => None,
    }
}

#[tokio::test]
async fn a_script_sees_its_keys_and_args_and_its_reply_and_errors_come_back_as_they_are() {
    let redis = rtc_testkit::redis().await.expect("the stack's redis");
    let client = connect(&RedisOptions::new(Endpoints::from_env().redis_url)).expect("a valid url");
    let (string, list) = (redis.key("string"), redis.key("list"));
    let item: &[u8] = &[0xff, 0x00, 0x01];

    // String keys, and args of two kinds: a string and bytes that are not UTF-8.
    let reply = WRITE_BOTH
        .run(
            &client,
            [string.clone(), list.clone()],
            [Value::from("node-1"), Value::Bytes(item.to_vec().into())],
        )
        .await
        .expect("redis is up");
    let Value::Array(parts) = reply else {
        panic!("an array, not {reply:?}");
    };
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert_eq!(parts[0], Value::Integer(2));
    assert_eq!(parts[1], Value::Integer(2));
    assert_eq!(bytes(&parts[2]), Some(b"node-1".as_slice()));
    assert_eq!(bytes(&parts[3]), Some(item));

    // The writes are Redis's, seen by another client.
    let seen: String = redis.client().get(&string).await.expect("get");
    assert_eq!(seen, "node-1");
    let len: i64 = redis.client().llen(&list).await.expect("llen");
    assert_eq!(len, 1);

    // A script's error reply is fred's error, with Redis's message in it.
    let none: [&str; 0] = [];
    let error = REFUSE
        .run(&client, none, none)
        .await
        .expect_err("the script refuses");
    assert!(error.to_string().contains("refused on purpose"), "{error}");

    client.quit().await.expect("quit");
    redis.cleanup().await.expect("cleanup");
}
