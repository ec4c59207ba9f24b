//! The NATS Streaming client protocol's messages (`pb/protocol.proto` of stan.go, unchanged since
//! v0.6.0), written out by hand so that building needs no `protoc`. Only the messages and fields
//! a client sends or reads are here; field numbers are the protocol's.

/// A message to store on a channel, sent to `<pubPrefix>.<channel>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PubMsg {
    #[prost(string, tag = "1")]
    pub client_id: String,
    #[prost(string, tag = "2")]
    pub guid: String,
    #[prost(string, tag = "3")]
    pub subject: String,
    #[prost(bytes = "bytes", tag = "5")]
    pub data: bytes::Bytes,
    #[prost(bytes = "bytes", tag = "6")]
    pub conn_id: bytes::Bytes,
}

/// The server's answer to a [`PubMsg`], once stored (or refused: `error`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PubAck {
    #[prost(string, tag = "1")]
    pub guid: String,
    #[prost(string, tag = "2")]
    pub error: String,
}

/// A delivered message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MsgProto {
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    #[prost(string, tag = "2")]
    pub subject: String,
    #[prost(string, tag = "3")]
    pub reply: String,
    #[prost(bytes = "bytes", tag = "4")]
    pub data: bytes::Bytes,
    #[prost(int64, tag = "5")]
    pub timestamp: i64,
    #[prost(bool, tag = "6")]
    pub redelivered: bool,
    #[prost(uint32, tag = "7")]
    pub redelivery_count: u32,
    #[prost(uint32, tag = "10")]
    pub crc32: u32,
}

/// Acknowledges a delivery, sent to the subscription's ack inbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    #[prost(string, tag = "1")]
    pub subject: String,
    #[prost(uint64, tag = "2")]
    pub sequence: u64,
}

/// Opens a session, sent to `_STAN.discover.<cluster id>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectRequest {
    #[prost(string, tag = "1")]
    pub client_id: String,
    #[prost(string, tag = "2")]
    pub heartbeat_inbox: String,
    #[prost(int32, tag = "3")]
    pub protocol: i32,
    #[prost(bytes = "bytes", tag = "4")]
    pub conn_id: bytes::Bytes,
    #[prost(int32, tag = "5")]
    pub ping_interval: i32,
    #[prost(int32, tag = "6")]
    pub ping_max_out: i32,
}

/// The subjects of a session's requests (random per server start on some versions: never
/// assumed), or `error`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectResponse {
    #[prost(string, tag = "1")]
    pub pub_prefix: String,
    #[prost(string, tag = "2")]
    pub sub_requests: String,
    #[prost(string, tag = "3")]
    pub unsub_requests: String,
    #[prost(string, tag = "4")]
    pub close_requests: String,
    #[prost(string, tag = "5")]
    pub error: String,
    #[prost(string, tag = "6")]
    pub sub_close_requests: String,
    #[prost(string, tag = "7")]
    pub ping_requests: String,
    #[prost(int32, tag = "8")]
    pub ping_interval: i32,
    #[prost(int32, tag = "9")]
    pub ping_max_out: i32,
    #[prost(int32, tag = "10")]
    pub protocol: i32,
}

/// A client's ping (protocol 1), sent to the session's `ping_requests`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    #[prost(bytes = "bytes", tag = "1")]
    pub conn_id: bytes::Bytes,
}

/// The answer to a [`Ping`]: empty while the session lives, else why it does not.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PingResponse {
    #[prost(string, tag = "1")]
    pub error: String,
}

/// Where a new subscription starts; only [`StartPosition::First`] is used (deliver all
/// available), and only for a durable group that does not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum StartPosition {
    NewOnly = 0,
    LastReceived = 1,
    TimeDeltaStart = 2,
    SequenceStart = 3,
    First = 4,
}

/// Subscribes, sent to the session's `sub_requests`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscriptionRequest {
    #[prost(string, tag = "1")]
    pub client_id: String,
    #[prost(string, tag = "2")]
    pub subject: String,
    #[prost(string, tag = "3")]
    pub q_group: String,
    #[prost(string, tag = "4")]
    pub inbox: String,
    #[prost(int32, tag = "5")]
    pub max_in_flight: i32,
    #[prost(int32, tag = "6")]
    pub ack_wait_in_secs: i32,
    #[prost(string, tag = "7")]
    pub durable_name: String,
    #[prost(enumeration = "StartPosition", tag = "10")]
    pub start_position: i32,
    #[prost(uint64, tag = "11")]
    pub start_sequence: u64,
    #[prost(int64, tag = "12")]
    pub start_time_delta: i64,
}

/// Where to send acks (`ack_inbox`, new for every subscribe), or `error`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscriptionResponse {
    #[prost(string, tag = "2")]
    pub ack_inbox: String,
    #[prost(string, tag = "3")]
    pub error: String,
}

/// Closes (to `sub_close_requests`, keeping a durable group) or removes (to `unsub_requests`)
/// a subscription; `inbox` is its ack inbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UnsubscribeRequest {
    #[prost(string, tag = "1")]
    pub client_id: String,
    #[prost(string, tag = "2")]
    pub subject: String,
    #[prost(string, tag = "3")]
    pub inbox: String,
    #[prost(string, tag = "4")]
    pub durable_name: String,
}

/// Ends a session, sent to `close_requests`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseRequest {
    #[prost(string, tag = "1")]
    pub client_id: String,
}

/// The answer to a [`CloseRequest`], [`UnsubscribeRequest`]: empty, or `error`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseResponse {
    #[prost(string, tag = "1")]
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Bytes as the Go client (gogo/protobuf) writes them, so that a field number or wire type
    /// typed wrong here shows up without a server.
    #[test]
    fn encodes_as_the_go_client_does() {
        let ack = Ack {
            subject: "a".into(),
            sequence: 300,
        };
        // field 1, length-delimited, "a"; field 2, varint 300.
        assert_eq!(ack.encode_to_vec(), [0x0a, 1, b'a', 0x10, 0xac, 0x02]);
        let publish = PubMsg {
            client_id: "c".into(),
            guid: "g".into(),
            subject: "s".into(),
            data: bytes::Bytes::from_static(b"{}"),
            conn_id: bytes::Bytes::from_static(b"x"),
        };
        assert_eq!(
            publish.encode_to_vec(),
            [
                0x0a, 1, b'c', 0x12, 1, b'g', 0x1a, 1, b's', 0x2a, 2, b'{', b'}', 0x32, 1, b'x'
            ]
        );
        let request = SubscriptionRequest {
            start_position: StartPosition::First as i32,
            ..Default::default()
        };
        // field 10, varint 4.
        assert_eq!(request.encode_to_vec(), [0x50, 4]);
        let message = MsgProto::decode(&[0x08, 7, 0x30, 1, 0x38, 2][..]).unwrap();
        assert_eq!(
            (
                message.sequence,
                message.redelivered,
                message.redelivery_count
            ),
            (7, true, 2)
        );
    }
}
