//! Both services, two replicas of each, on a Redis Cluster (three masters, a replica each) and a
//! three-server JetStream cluster (the stream replicated three times), all of the test's own on
//! loopback; a NATS server and the Redis master holding the queue are SIGKILLed mid-run and
//! started again.

use std::time::{Duration, Instant};

use common::Subject;
use common::testing::TestBus;
use common::testing::clusters::{NatsCluster, RedisCluster};
use e2e::scenario::Scenario;

use super::support::{
    Republish, TwoOfEach, assert_expired_once, last_expiry, place_orders, start_two_of_each, until,
    wait_for_some,
};

/// The name of the server leading the world's stream.
async fn stream_leader(world: &Scenario) -> String {
    let TestBus::JetStream(stream) = &world.bus else {
        unreachable!("the world is on JetStream")
    };
    let info = stream
        .js
        .get_stream(&stream.spec.name)
        .await
        .expect("the stream")
        .get_info()
        .await
        .expect("the stream's info");
    info.cluster
        .and_then(|cluster| cluster.leader)
        .expect("a replicated stream has a leader")
}

#[tokio::test]
async fn on_clusters_two_replicas_of_each_service_ride_out_a_nats_server_and_the_redis_master_dying()
 {
    let mut redis = RedisCluster::start(3, 1).await;
    let mut nats = NatsCluster::start(3).await;
    // A 12 s window: the payments travel through the stream whose leader is killed, and must
    // still land before their orders expire on a loaded machine (8 s was too tight there).
    let mut world = Scenario::on_bus(TestBus::replicated(&nats.url_list(), 3).await, 12).await;
    world.redis_url = redis.url_list();
    let TwoOfEach { processes, apis } = start_two_of_each(&world, "cluster").await;

    // While the orders are placed: the server leading the stream dies and comes back 3 s later;
    // then, with the jobs pending and more arriving, the Redis master holding the queue dies and
    // comes back (as the new master's replica) a second after its replica took over.
    let queue_key = format!("{{{}:expiration}}:due", world.redis_prefix);
    let chaos = async {
        wait_for_some(&world, Subject::OrderCreated, 50).await;
        let leader = stream_leader(&world).await;
        let index = nats.index_of(&leader);
        nats.kill(index).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        nats.start_again(index).await;

        wait_for_some(&world, Subject::OrderCreated, 120).await;
        let master = redis.master_of(&queue_key).await;
        let killed_at = Instant::now();
        redis.kill(master).await;
        redis
            .wait_for_failover(&queue_key, master, Duration::from_secs(30))
            .await;
        let failover = killed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.start_again(master).await;
        (leader, master, failover)
    };
    let placing = place_orders(&world, &apis, 200, 4, Duration::from_millis(500), 4);
    let (placed, (leader, master, failover)) = tokio::join!(placing, chaos);

    // The world's log carries on although its consumer may have lived on the killed server.
    let expired = assert_expired_once(
        &world.log,
        &placed,
        until(last_expiry(&placed), Duration::from_secs(40)),
        Republish::Never,
    )
    .await;
    println!(
        "200 orders, two replicas of each service on a Redis Cluster and a 3-server JetStream \
         (R3): stream leader {leader} SIGKILLed and restarted 3 s later, Redis master {master} \
         SIGKILLed (failover in {failover:?}) and restarted: {expired}"
    );
    drop(processes);
    world.finish().await;
}
