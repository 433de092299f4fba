use super::*;

fn decided(bytes: &[u8]) -> Option<Sniffed> {
    classify(bytes, false)
}

/// A ClientHello as a TLS 1.3 client sends it, with `sni` if given.
fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut extensions = Vec::new();
    // supported_versions: TLS 1.3
    extensions.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    if let Some(name) = sni {
        let name = name.as_bytes();
        let entry_len = 1 + 2 + name.len();
        extensions.extend_from_slice(&0u16.to_be_bytes());
        extensions.extend_from_slice(&((2 + entry_len) as u16).to_be_bytes());
        extensions.extend_from_slice(&(entry_len as u16).to_be_bytes());
        extensions.push(0);
        extensions.extend_from_slice(&(name.len() as u16).to_be_bytes());
        extensions.extend_from_slice(name);
    }
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[7; 32]);
    hello.push(32);
    hello.extend_from_slice(&[9; 32]);
    hello.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
    hello.extend_from_slice(&[0x01, 0x00]);
    hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    hello.extend_from_slice(&extensions);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn http1_request_lines_are_http() {
    for line in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /api/v1/items?x=1 HTTP/1.0\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n",
        b"GET http://example.com/ HTTP/1.1\n",
    ] {
        assert_eq!(
            decided(line),
            Some(Sniffed::Http1),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn a_request_line_still_arriving_waits() {
    for part in [
        &b"G"[..],
        b"GET",
        b"GET ",
        b"GET /index.html HT",
        b"PRI * HTTP/2",
    ] {
        assert_eq!(decided(part), None, "{:?}", String::from_utf8_lossy(part));
    }
}

#[test]
fn the_h2_preface_is_http2() {
    assert_eq!(decided(H2_PREFACE), Some(Sniffed::Http2));
    let mut with_settings = H2_PREFACE.to_vec();
    with_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    assert_eq!(decided(&with_settings), Some(Sniffed::Http2));
    // The HTTP/1-looking start of the preface is not HTTP/1.
    assert_eq!(
        decided(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
        Some(Sniffed::Opaque)
    );
}

#[test]
fn other_protocols_are_opaque() {
    for bytes in [
        // Redis: RESP array, inline command
        &b"*1\r\n$4\r\nPING\r\n"[..],
        b"SET key value\r\n",
        b"PING\r\n",
        // PostgreSQL startup, MySQL-ish binary, SSH client banner
        &[0, 0, 0, 8, 4, 210, 22, 47],
        b"SSH-2.0-OpenSSH_9.6\r\n",
        // a 22 byte that is no TLS record
        &[0x16, 0x01, 0x00],
        b"GET / HTTP/2.0\r\n",
        b"GET  HTTP/1.1\r\n",
        b" GET / HTTP/1.1\r\n",
        b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        assert_eq!(
            decided(bytes),
            Some(Sniffed::Opaque),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn a_long_request_target_fills_the_peek_and_is_http() {
    let mut line = b"GET /".to_vec();
    line.resize(PEEK_MAX, b'a');
    assert_eq!(classify(&line, true), Some(Sniffed::Http1));
    assert_eq!(classify(&line, false), None);
}

#[test]
fn tls_client_hellos_are_tls_with_their_server_name() {
    let hello = client_hello(Some("reviews.default.svc.cluster.local"));
    assert_eq!(
        decided(&hello),
        Some(Sniffed::Tls(Some(
            "reviews.default.svc.cluster.local".into()
        )))
    );
    assert_eq!(decided(&client_hello(None)), Some(Sniffed::Tls(None)));
    // Half a ClientHello waits for the rest, unless the peek is full.
    let half = &hello[..hello.len() / 2];
    assert_eq!(decided(half), None);
    assert_eq!(classify(half, true), Some(Sniffed::Tls(None)));
}

#[test]
fn hostile_client_hellos_never_panic_and_name_no_server() {
    let hello = client_hello(Some("a.example"));
    for cut in 0..hello.len() {
        let _ = classify(&hello[..cut], true);
        let _ = classify(&hello[..cut], false);
    }
    // Every length byte inflated: nothing read past the end.
    for i in 5..hello.len() {
        let mut bad = hello.clone();
        bad[i] = 0xff;
        let _ = classify(&bad, true);
    }
    let mut bad_name = client_hello(Some("a.example"));
    let at = bad_name.len() - 2;
    bad_name[at] = b'\n';
    assert_eq!(decided(&bad_name), Some(Sniffed::Tls(None)));
}

#[tokio::test]
async fn a_silent_client_times_out_and_a_closed_one_is_closed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let silent = tokio::net::TcpStream::connect(address).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    assert_eq!(
        sniff(&server, Duration::from_millis(20)).await.unwrap(),
        Sniffed::Timeout
    );
    drop(silent);
    assert_eq!(
        sniff(&server, Duration::from_secs(5)).await.unwrap(),
        Sniffed::Closed
    );
}

#[tokio::test]
async fn a_request_line_split_over_writes_is_http() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    client.set_nodelay(true).unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let writer = tokio::spawn(async move {
        client.write_all(b"GET /slow").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        client.write_all(b" HTTP/1.1\r\n\r\n").await.unwrap();
        client
    });
    assert_eq!(
        sniff(&server, Duration::from_secs(5)).await.unwrap(),
        Sniffed::Http1
    );
    // The bytes were peeked, not read.
    let mut buffer = [0u8; 64];
    let _client = writer.await.unwrap();
    let n = server.try_read(&mut buffer).unwrap();
    assert!(buffer[..n].starts_with(b"GET /slow"));
}

/// Mutated request lines, prefaces and ClientHellos: classification never
/// panics, and what it calls HTTP/1 always has a whole request line or a
/// full peek.
#[test]
fn fuzz_classify() {
    let seeds = vec![
        b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        H2_PREFACE.to_vec(),
        client_hello(Some("reviews.default.svc.cluster.local")),
        b"*1\r\n$4\r\nPING\r\n".to_vec(),
        b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
    ];
    let ran = crate::fuzz::run("sniff::classify", &seeds, 20_000, |input| {
        for full in [false, true] {
            if classify(input, full) == Some(Sniffed::Http1) && !full {
                assert!(input.contains(&b'\n'), "{input:?}");
            }
        }
    });
    assert!(ran >= 20_000);
}
