//! The adversarial corpus: raw HTTP/1.1 requests and upstream responses that
//! intermediaries have been known to read two ways. Each case says what the
//! client must get (status, or the connection closed with no answer) and
//! how many requests the upstream may see. One proxy and one recording
//! upstream serve every case, each on a fresh connection.

use std::time::Duration;

use crate::support::TestProxy;
use crate::support::raw::{RawUpstream, exchange};

/// What a case expects.
struct Case {
    name: &'static str,
    request: &'static [u8],
    /// The status line's code, or `None` for "closed without an answer".
    status: Option<u16>,
    /// Requests the upstream receives.
    upstream: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "two different Content-Lengths",
        request: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        status: Some(400),
        upstream: 0,
    },
    Case {
        name: "Content-Length with a sign",
        request: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        status: Some(400),
        upstream: 0,
    },
    Case {
        name: "Content-Length list",
        request: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd",
        status: Some(400),
        upstream: 0,
    },
    Case {
        name: "Transfer-Encoding not ending in chunked",
        request: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        status: Some(400),
        upstream: 0,
    },
    Case {
        name: "space before the colon of Transfer-Encoding",
        request: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        status: Some(400),
        upstream: 0,
    },
    Case {
        name: "obsolete line folding",
        request: b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        status: Some(400),
        upstream: 0,
    },
    Case {
        name: "NUL in a header value",
        request: b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\0b\r\n\r\n",
        status: Some(400),
        upstream: 0,
    },
    Case {
        name: "bare CR in a header value",
        request: b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n",
        status: Some(400),
        upstream: 0,
    },
    Case {
        name: "a header name with a space",
        request: b"GET / HTTP/1.1\r\nHost: a\r\nX Bad: 1\r\n\r\n",
        status: Some(400),
        upstream: 0,
    },
    Case {
        name: "an unknown HTTP version",
        request: b"GET / HTTP/1.7\r\nHost: a\r\n\r\n",
        status: Some(400),
        upstream: 0,
    },
    Case {
        // Chunked wins, and the connection closes after the answer (RFC 9112
        // §6.1), so the smuggled request is never read.
        name: "a CL.TE smuggling attempt",
        request: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
        status: Some(200),
        upstream: 1,
    },
    Case {
        name: "two pipelined requests",
        request: b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        status: Some(200),
        upstream: 2,
    },
    Case {
        name: "a chunk extension",
        request: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",
        status: Some(200),
        upstream: 1,
    },
    Case {
        name: "an h2c upgrade request is served as HTTP/1.1",
        request: b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        status: Some(200),
        upstream: 1,
    },
];

#[tokio::test]
async fn the_request_corpus_gets_one_reading() {
    let upstream = RawUpstream::start().await;
    let proxy = TestProxy::forwarding_to(upstream.addr).await;
    let mut failures = Vec::new();
    for case in CASES {
        let before = upstream.received().len();
        let reply = exchange(proxy.addr("web"), case.request, Duration::from_secs(2)).await;
        let status = reply
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok());
        let reached = upstream.received().len() - before;
        if status != case.status || reached != case.upstream {
            failures.push(format!(
                "{}: got status {status:?} and {reached} upstream request(s), want {:?} and {}\n  {}",
                case.name,
                case.status,
                case.upstream,
                reply.lines().next().unwrap_or("(closed)")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An upstream response and what the client must get from it.
struct ResponseCase {
    name: &'static str,
    method: &'static str,
    response: &'static [u8],
    status: u16,
    /// Text the client's response must contain (the body, or a header).
    contains: &'static str,
    /// Text it must not contain.
    lacks: &'static str,
}

const RESPONSES: &[ResponseCase] = &[
    ResponseCase {
        name: "two different Content-Lengths",
        method: "GET",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk",
        status: 502,
        contains: "upstream error",
        lacks: "okk",
    },
    ResponseCase {
        name: "a Content-Length that is not a number",
        method: "GET",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nok",
        status: 502,
        contains: "upstream error",
        lacks: "",
    },
    ResponseCase {
        name: "204 with a length and a body",
        method: "GET",
        response: b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
        status: 204,
        contains: "",
        lacks: "hello",
    },
    ResponseCase {
        name: "a HEAD answer with a length and no body",
        method: "HEAD",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        status: 200,
        contains: "content-length: 100",
        lacks: "",
    },
    ResponseCase {
        name: "304 with Transfer-Encoding",
        method: "GET",
        response: b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        status: 304,
        contains: "",
        lacks: "transfer-encoding",
    },
    ResponseCase {
        name: "a 100 Continue before the answer",
        method: "GET",
        response: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        status: 200,
        contains: "ok",
        lacks: "",
    },
    ResponseCase {
        name: "a hop-by-hop header in the response named in Connection",
        method: "GET",
        response: b"HTTP/1.1 200 OK\r\nConnection: x-internal\r\nx-internal: secret\r\nContent-Length: 2\r\n\r\nok",
        status: 200,
        contains: "ok",
        lacks: "secret",
    },
];

#[tokio::test]
async fn the_response_corpus_reaches_clients_with_one_framing() {
    let mut failures = Vec::new();
    for case in RESPONSES {
        let upstream = RawUpstream::answering(case.response).await;
        let proxy = TestProxy::forwarding_to(upstream.addr).await;
        let request = format!(
            "{} / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            case.method
        );
        let reply = exchange(
            proxy.addr("web"),
            request.as_bytes(),
            Duration::from_secs(2),
        )
        .await;
        let lower = reply.to_ascii_lowercase();
        let status_ok = reply.starts_with(&format!("HTTP/1.1 {}", case.status));
        let contains_ok = lower.contains(&case.contains.to_ascii_lowercase());
        let lacks_ok = case.lacks.is_empty() || !lower.contains(&case.lacks.to_ascii_lowercase());
        if !(status_ok && contains_ok && lacks_ok) {
            failures.push(format!("{}:\n{reply}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}
