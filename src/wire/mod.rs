//! Sans-I/O framing of Kafka requests and responses.
//!
//! Every Kafka message on the wire is a 4-byte big-endian length followed by that many
//! bytes: a header (request header v1/v2, response header v0/v1, depending on the API
//! and version — "flexible versions", KIP-482) and the body. This module turns typed
//! messages from the `kafka-protocol` crate into frames and back, and nothing else: no
//! sockets, no clocks, so it is fully testable on byte slices.
//!
//! Like mini-redis, a frame is *checked* before it is parsed: [`check_frame`] says
//! whether a whole frame is buffered yet. "Incomplete" is the normal state of a
//! stream and is `Ok(None)`, not an error. A length that is negative or larger than
//! the configured maximum is an error: it means the peer is not speaking Kafka (an
//! HTTP server answers `HTTP/1.1 ...`, whose first four bytes read as a length of
//! about 1.2 GB).

pub mod produce;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

/// Errors of the framing layer. They are about bytes, not about sockets.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame length {len} is not valid (maximum {max}); the peer does not speak the Kafka protocol{hint}")]
    BadFrameLength { len: i64, max: usize, hint: &'static str },
    #[error("could not encode {api:?} v{version} request: {reason}")]
    Encode { api: ApiKey, version: i16, reason: String },
    #[error("could not decode {api:?} v{version} response: {reason}")]
    Decode { api: ApiKey, version: i16, reason: String },
    #[error("response frame of {len} bytes is too short to hold a correlation id")]
    ShortResponse { len: usize },
}

/// Size of the length prefix of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// Says whether `buf` starts with a complete frame.
///
/// Returns `Ok(Some(n))` with the frame's total length including the prefix when it is
/// complete, `Ok(None)` when more bytes are needed.
pub fn check_frame(buf: &[u8], max_frame: usize) -> Result<Option<usize>, WireError> {
    if buf.len() < LENGTH_PREFIX {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    // A TLS record header (content type 20..=23, version 3.x) read as a length is
    // 335..=402 MB: under any sane maximum, so it must be recognised by its shape,
    // or we would wait for hundreds of megabytes that never come.
    if (0x14..=0x17).contains(&buf[0]) && buf[1] == 0x03 && buf[2] <= 0x04 {
        return Err(WireError::BadFrameLength {
            len: i64::from(len),
            max: max_frame,
            hint: " (it answered with a TLS record: is this a TLS listener?)",
        });
    }
    if len < 4 || len as usize > max_frame {
        let hint = if buf.starts_with(b"HTTP") { " (it answered like an HTTP server)" } else { "" };
        return Err(WireError::BadFrameLength { len: i64::from(len), max: max_frame, hint });
    }
    let total = LENGTH_PREFIX + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Encodes `request` as a complete frame (length prefix included).
pub fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> Result<Bytes, WireError> {
    let api = api_key::<R>();
    let enc_err = |e: anyhow::Error| WireError::Encode { api, version, reason: e.to_string() };
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    let header_version = R::header_version(version);
    let size =
        header.compute_size(header_version).map_err(enc_err)? + request.compute_size(version).map_err(enc_err)?;
    let mut buf = BytesMut::with_capacity(LENGTH_PREFIX + size);
    buf.put_i32(size as i32);
    header.encode(&mut buf, header_version).map_err(enc_err)?;
    request.encode(&mut buf, version).map_err(enc_err)?;
    Ok(buf.freeze())
}

/// Reads the correlation id of a response frame (prefix already removed).
pub fn peek_correlation_id(frame: &[u8]) -> Result<i32, WireError> {
    if frame.len() < 4 {
        return Err(WireError::ShortResponse { len: frame.len() });
    }
    Ok(i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]))
}

/// Decodes a response frame (prefix already removed) for request type `R` at `version`.
pub fn decode_response<R: Request>(mut frame: Bytes, version: i16) -> Result<R::Response, WireError> {
    let api = api_key::<R>();
    let dec_err = |e: anyhow::Error| WireError::Decode { api, version, reason: e.to_string() };
    let header_version = <R::Response as kafka_protocol::protocol::HeaderVersion>::header_version(version);
    ResponseHeader::decode(&mut frame, header_version).map_err(dec_err)?;
    let response = R::Response::decode(&mut frame, version).map_err(dec_err)?;
    if frame.has_remaining() {
        // Trailing bytes mean we disagree with the broker about the message layout.
        return Err(WireError::Decode {
            api,
            version,
            reason: format!("{} unexpected bytes after the response body", frame.remaining()),
        });
    }
    Ok(response)
}

/// The `ApiKey` of a request type.
#[must_use]
pub fn api_key<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).unwrap_or(ApiKey::ApiVersions)
}

/// Encodes a response as a frame; used by tests and by synthetic peers.
pub fn encode_response<R: Request>(
    response: &R::Response,
    version: i16,
    correlation_id: i32,
) -> Result<Bytes, WireError> {
    let api = api_key::<R>();
    let enc_err = |e: anyhow::Error| WireError::Encode { api, version, reason: e.to_string() };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = <R::Response as kafka_protocol::protocol::HeaderVersion>::header_version(version);
    let size =
        header.compute_size(header_version).map_err(enc_err)? + response.compute_size(version).map_err(enc_err)?;
    let mut buf = BytesMut::with_capacity(LENGTH_PREFIX + size);
    buf.put_i32(size as i32);
    header.encode(&mut buf, header_version).map_err(enc_err)?;
    response.encode(&mut buf, version).map_err(enc_err)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, MetadataRequest};

    #[test]
    fn incomplete_is_not_an_error() {
        assert!(check_frame(&[], 1024).unwrap().is_none());
        assert!(check_frame(&[0, 0, 0], 1024).unwrap().is_none());
        assert!(check_frame(&[0, 0, 0, 8, 1, 2], 1024).unwrap().is_none());
        assert_eq!(check_frame(&[0, 0, 0, 4, 1, 2, 3, 4, 9], 1024).unwrap(), Some(8));
    }

    #[test]
    fn http_peer_is_named() {
        let err = check_frame(b"HTTP/1.1 400 Bad Request\r\n", 100 << 20).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("HTTP"), "{msg}");
        assert!(check_frame(&[0xff, 0xff, 0xff, 0xff], 1024).is_err());
        // a TLS alert / handshake record from a TLS listener, even under a large maximum
        for first in [[0x15, 0x03, 0x03, 0x00], [0x16, 0x03, 0x01, 0x02]] {
            let msg = check_frame(&first, 512 << 20).unwrap_err().to_string();
            assert!(msg.contains("TLS"), "{msg}");
        }
    }

    #[test]
    fn request_round_trip() {
        let req = MetadataRequest::default().with_allow_auto_topic_creation(false);
        let frame = encode_request(&req, 12, 77, "mirrorproxy").unwrap();
        let n = check_frame(&frame, 1 << 20).unwrap().unwrap();
        assert_eq!(n, frame.len());
        let mut body = frame.slice(4..);
        let header = kafka_protocol::protocol::decode_request_header_from_buffer(&mut body).unwrap();
        assert_eq!(header.correlation_id, 77);
        assert_eq!(header.request_api_version, 12);
        let back = MetadataRequest::decode(&mut body, 12).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn response_round_trip_and_trailing_bytes() {
        let resp = ApiVersionsResponse::default().with_error_code(0);
        let frame = encode_response::<ApiVersionsRequest>(&resp, 3, 5).unwrap();
        let body = frame.slice(4..);
        assert_eq!(peek_correlation_id(&body).unwrap(), 5);
        let back = decode_response::<ApiVersionsRequest>(body.clone(), 3).unwrap();
        assert_eq!(back, resp);
        let mut longer = BytesMut::from(&body[..]);
        longer.put_u8(0);
        assert!(decode_response::<ApiVersionsRequest>(longer.freeze(), 3).is_err());
        // garbage never panics
        for cut in 0..body.len() {
            let _ = decode_response::<ApiVersionsRequest>(body.slice(..cut), 3);
        }
    }
}
