//! Against the stack's toxiproxy and Redis: a proxy of the test's own
//! forwards RESP over a plain TCP connection, and each toxic does to that
//! connection what toxiproxy promises: latency delays the answer by at least
//! the latency, `timeout` stalls it (or closes it after its time),
//! `reset_peer` resets it, a disabled proxy refuses connections. Proxies go
//! away when removed or dropped.

use std::time::Duration;

use rtc_testkit::Endpoints;
use rtc_testkit::toxiproxy::{Proxy, Toxic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// How long a stalled connection is watched for an answer that must not come.
const STALL: Duration = Duration::from_secs(1);

/// The stack's Redis as `host:port`, the proxies' upstream.
fn redis_upstream() -> String {
    let url = Endpoints::from_env().redis_url;
    let rest = url.trim_start_matches("redis://");
    rest.split('/').next().unwrap_or(rest).to_owned()
}

async fn redis_proxy(kind: &str) -> Result<Proxy> {
    let toxiproxy = rtc_testkit::toxiproxy().await?;
    Ok(toxiproxy.proxy(kind, &redis_upstream()).await?)
}

/// Sends a RESP PING and reads Redis' `+PONG`.
async fn ping(stream: &mut TcpStream) -> Result {
    stream.write_all(b"PING\r\n").await?;
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).await?;
    assert_eq!(&answer, b"+PONG\r\n");
    Ok(())
}

/// Reads until the connection ends; true when it ends (EOF or reset) within
/// `within` without any data.
async fn ends_without_data(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 64];
    match timeout(within, stream.read(&mut buffer)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test]
async fn latency_delays_each_round_trip_by_at_least_the_latency() -> Result {
    let proxy = redis_proxy("latency").await?;
    assert_eq!(proxy.upstream(), redis_upstream());
    assert!(proxy.listen().ip().is_loopback());
    let mut conn = TcpStream::connect(proxy.listen()).await?;
    ping(&mut conn).await?;

    let latency = Duration::from_millis(300);
    let toxic = proxy.add(&Toxic::latency(latency, Duration::ZERO)).await?;
    assert_eq!(proxy.toxics().await?, std::slice::from_ref(&toxic));
    for _ in 0..2 {
        let sent = Instant::now();
        ping(&mut conn).await?;
        let took = sent.elapsed();
        assert!(
            took >= latency,
            "a round trip through {latency:?} of latency took {took:?}"
        );
    }

    proxy.remove_toxic(&toxic).await?;
    assert!(proxy.toxics().await?.is_empty());
    ping(&mut conn).await?;
    proxy.remove().await?;
    Ok(())
}

#[tokio::test]
async fn a_timeout_of_zero_stalls_the_connection_until_it_is_removed() -> Result {
    let proxy = redis_proxy("stall").await?;
    let mut conn = TcpStream::connect(proxy.listen()).await?;
    ping(&mut conn).await?;

    let stall = proxy.add(&Toxic::timeout(Duration::ZERO)).await?;
    let mut answer = [0u8; 7];
    conn.write_all(b"PING\r\n").await?;
    let stalled = timeout(STALL, conn.read_exact(&mut answer)).await;
    assert!(
        stalled.is_err(),
        "a stalled connection must not answer, got {stalled:?}"
    );

    // Removing a timeout toxic closes the connections it held; new ones work.
    proxy.remove_toxic(&stall).await?;
    let mut fresh = TcpStream::connect(proxy.listen()).await?;
    ping(&mut fresh).await?;
    Ok(())
}

#[tokio::test]
async fn a_timeout_closes_the_connection_after_its_time() -> Result {
    let proxy = redis_proxy("timeout").await?;
    let mut conn = TcpStream::connect(proxy.listen()).await?;
    proxy
        .add(&Toxic::timeout(Duration::from_millis(200)))
        .await?;
    conn.write_all(b"PING\r\n").await?;
    assert!(
        ends_without_data(&mut conn, Duration::from_secs(5)).await,
        "the connection must close after the toxic's timeout, with no answer"
    );
    Ok(())
}

#[tokio::test]
async fn reset_peer_resets_the_connection() -> Result {
    let proxy = redis_proxy("reset").await?;
    let mut conn = TcpStream::connect(proxy.listen()).await?;
    ping(&mut conn).await?;
    proxy
        .add(&Toxic::reset_peer(Duration::ZERO).upstream())
        .await?;
    conn.write_all(b"PING\r\n").await?;
    assert!(
        ends_without_data(&mut conn, Duration::from_secs(5)).await,
        "the connection must be reset, with no answer"
    );
    Ok(())
}

#[tokio::test]
async fn bandwidth_and_slicer_still_deliver_every_byte() -> Result {
    let proxy = redis_proxy("slow").await?;
    let bandwidth = proxy.add(&Toxic::bandwidth(1)).await?;
    let slicer = proxy
        .add(&Toxic::slicer(2, 1, Duration::from_micros(500)))
        .await?;
    assert_eq!(proxy.toxics().await?, [bandwidth, slicer]);
    let mut conn = TcpStream::connect(proxy.listen()).await?;
    ping(&mut conn).await?;
    Ok(())
}

#[tokio::test]
async fn a_disabled_proxy_refuses_connections_until_enabled() -> Result {
    let proxy = redis_proxy("down").await?;
    let mut conn = TcpStream::connect(proxy.listen()).await?;
    ping(&mut conn).await?;

    proxy.disable().await?;
    assert!(
        ends_without_data(&mut conn, Duration::from_secs(5)).await,
        "disabling the proxy closes its connections"
    );
    assert!(TcpStream::connect(proxy.listen()).await.is_err());

    proxy.enable().await?;
    let mut again = TcpStream::connect(proxy.listen()).await?;
    ping(&mut again).await?;
    Ok(())
}

#[tokio::test]
async fn a_dropped_proxy_is_deleted() -> Result {
    let proxy = redis_proxy("dropped").await?;
    let listen = proxy.listen();
    let name = proxy.name().to_owned();
    TcpStream::connect(listen).await?;
    drop(proxy);

    assert!(
        TcpStream::connect(listen).await.is_err(),
        "proxy {name} still listens on {listen}"
    );
    let toxiproxy = rtc_testkit::toxiproxy().await?;
    let another = toxiproxy.proxy("dropped", &redis_upstream()).await?;
    assert_ne!(another.name(), name, "every proxy gets a name of its own");
    Ok(())
}
