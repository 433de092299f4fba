//! An authoritative DNS server on loopback (UDP, real DNS messages via
//! hickory-proto) whose A/AAAA records a test changes while it runs, and
//! which can be told to fail (SERVFAIL) to test what a resolver keeps.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

pub struct TestDns {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    /// Lowercase name without the trailing dot → (addresses, TTL).
    records: Mutex<HashMap<String, (Vec<IpAddr>, u32)>>,
    failing: AtomicBool,
    queries: AtomicUsize,
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let state = Arc::new(State {
            records: Mutex::new(HashMap::new()),
            failing: AtomicBool::new(false),
            queries: AtomicUsize::new(0),
        });
        let task = tokio::spawn(serve(socket, state.clone()));
        TestDns { addr, state, task }
    }

    /// Answers `name` with `addresses` (A and AAAA) and `ttl` seconds.
    pub fn set(&self, name: &str, addresses: &[IpAddr], ttl: u32) {
        self.state
            .records
            .lock()
            .unwrap()
            .insert(name.to_lowercase(), (addresses.to_vec(), ttl));
    }

    /// While failing, every query gets SERVFAIL.
    pub fn fail(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    pub fn queries(&self) -> usize {
        self.state.queries.load(Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, state: Arc<State>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buffer[..len]) else {
            continue;
        };
        state.queries.fetch_add(1, Ordering::SeqCst);
        let response = answer(&state, &query);
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

fn answer(state: &State, query: &Message) -> Message {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.add_queries(query.queries.clone());
    if state.failing.load(Ordering::SeqCst) {
        response.metadata.response_code = ResponseCode::ServFail;
        return response;
    }
    let records = state.records.lock().unwrap();
    for question in &query.queries {
        let name = question
            .name()
            .to_string()
            .trim_end_matches('.')
            .to_lowercase();
        let Some((addresses, ttl)) = records.get(&name) else {
            response.metadata.response_code = ResponseCode::NXDomain;
            continue;
        };
        for address in addresses {
            let data = match (address, question.query_type()) {
                (IpAddr::V4(ip), RecordType::A) => RData::A(A(*ip)),
                (IpAddr::V6(ip), RecordType::AAAA) => RData::AAAA(AAAA(*ip)),
                _ => continue,
            };
            response.add_answer(Record::from_rdata(question.name().clone(), *ttl, data));
        }
    }
    response
}
