//! Smoke test against the stack's Redis: a value written under the test's
//! prefix reads back, and cleanup removes it.

use fred::interfaces::KeysInterface;
use fred::types::Expiration;
use rtc_testkit::Error;

#[tokio::test]
async fn set_then_get_round_trips_under_the_test_prefix() -> Result<(), Error> {
    let redis = rtc_testkit::redis().await?;
    let key = redis.key("greeting");
    assert!(key.starts_with(redis.prefix()));

    redis
        .client()
        .set::<(), _, _>(&key, "hello", Some(Expiration::EX(60)), None, false)
        .await?;
    let value: Option<String> = redis.client().get(&key).await?;
    assert_eq!(value.as_deref(), Some("hello"));

    let other = rtc_testkit::redis().await?;
    assert_ne!(other.prefix(), redis.prefix());
    let unseen: Option<String> = other.client().get(other.key("greeting")).await?;
    assert_eq!(
        unseen, None,
        "another test's prefix must not see this value"
    );

    let checker = other.client().clone();
    redis.cleanup().await?;
    let after: Option<String> = checker.get(&key).await?;
    assert_eq!(after, None, "cleanup deletes the test's keys");
    other.cleanup().await
}
