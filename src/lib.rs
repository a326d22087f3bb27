//! mirrorproxy: mirrors Kafka topics between clusters, forwarding record batches as bytes.
//!
//! Layering (bottom up): [`wire`] and [`batch`] are sans-I/O codecs over `Bytes`;
//! [`net`] owns sockets, correlation ids and pipelining; [`cluster`] knows brokers,
//! leaders and topics; [`engine`] moves batches from source partitions to target
//! partitions; [`config`], [`metrics`] and the CLI sit on top.
pub mod batch;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod groups;
pub mod heartbeat;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod periodic;
pub mod registry;
pub mod reload;
pub mod topicsync;
pub mod topology;
pub mod translate;
pub mod txn;
pub mod wire;
