//! The orders service against the real MongoDB-compatible server and NATS of the local stack
//! (`scripts/stack up`; `MONGO_URI` and `NATS_URL` override the addresses). Each test starts the
//! service in-process on port 0 with a database, stream and subject prefix of its own.

mod api {
    pub mod helpers;

    mod db_commands;
    mod limits;
    mod listeners;
    mod ops;
    mod outages;
    mod outbox;
    mod routes;
    mod startup;
    mod transitions;
}
