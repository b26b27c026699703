//! Real SMTP servers for tests, on ephemeral loopback ports: mailin-embedded
//! keeping every message it accepts, with scripted replies and delays to
//! simulate faults, plus two raw listeners that stall or drop connections.

use std::collections::VecDeque;
use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailin_embedded::response::OK;
use mailin_embedded::{Handler, Response, Server};

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// Returns the value of the Message-ID header, as sent.
    pub fn message_id(&self) -> Option<String> {
        self.text()
            .lines()
            .find_map(|line| line.strip_prefix("Message-ID: "))
            .map(str::to_owned)
    }
}

/// State shared by every connection of one server.
#[derive(Default)]
struct Shared {
    inbox: Mutex<Vec<Received>>,
    /// Reply codes for the next messages' DATA command; 250 once empty.
    script: Mutex<VecDeque<u16>>,
    /// Pause before replying to each message's end of data.
    delay: Mutex<Duration>,
    /// Messages whose data transfer started, accepted or not.
    attempts: AtomicUsize,
}

#[derive(Clone)]
struct Capture {
    shared: Arc<Shared>,
    recipients: Vec<String>,
    data: Vec<u8>,
}

impl Handler for Capture {
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.shared.attempts.fetch_add(1, Ordering::SeqCst);
        // Scripted failures are the reply to the DATA command itself: mailin stays in
        // its data state after a failure at the end of data, which would
        // leave the client waiting.
        let code = self
            .shared
            .script
            .lock()
            .expect("lock is never poisoned")
            .pop_front()
            .unwrap_or(250);
        if code != 250 {
            return Response::custom(code, format!("scripted reply {code}"));
        }
        self.recipients = to.to_vec();
        self.data.clear();
        OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let delay = *self.shared.delay.lock().expect("lock is never poisoned");
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let message = Received {
            recipients: std::mem::take(&mut self.recipients),
            data: std::mem::take(&mut self.data),
        };
        self.shared
            .inbox
            .lock()
            .expect("lock is never poisoned")
            .push(message);
        OK
    }
}

/// A running server. Its thread ends with the test process.
pub struct SmtpServer {
    pub port: u16,
    shared: Arc<Shared>,
}

impl SmtpServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
        let port = listener
            .local_addr()
            .expect("bound listener has an address")
            .port();
        let shared = Arc::new(Shared::default());
        let handler = Capture {
            shared: Arc::clone(&shared),
            recipients: Vec::new(),
            data: Vec::new(),
        };
        let mut server = Server::new(handler);
        server
            .with_name("test-smtp")
            .with_num_threads(32)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        Self { port, shared }
    }

    /// Makes the next messages get these reply codes to their DATA command.
    pub fn script_replies(&self, codes: &[u16]) {
        self.shared
            .script
            .lock()
            .expect("lock is never poisoned")
            .extend(codes);
    }

    /// Makes the server wait this long before accepting each message.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().expect("lock is never poisoned") = delay;
    }

    /// Messages whose data transfer started, including rejected ones.
    pub fn attempts(&self) -> usize {
        self.shared.attempts.load(Ordering::SeqCst)
    }

    pub fn messages(&self) -> Vec<Received> {
        self.shared
            .inbox
            .lock()
            .expect("lock is never poisoned")
            .clone()
    }

    pub fn messages_to(&self, address: &str) -> Vec<Received> {
        self.messages()
            .into_iter()
            .filter(|message| {
                message
                    .recipients
                    .iter()
                    .any(|recipient| recipient == address)
            })
            .collect()
    }
}

/// Starts a listener that accepts connections and never sends the greeting.
pub fn start_silent_listener() -> u16 {
    start_raw_listener(|mut stream| {
        // Hold the connection open, reading whatever the client sends.
        let mut buffer = [0u8; 256];
        while matches!(stream.read(&mut buffer), Ok(read) if read > 0) {}
    })
}

/// Starts a listener that closes every connection as soon as it is accepted.
pub fn start_closing_listener() -> u16 {
    start_raw_listener(drop)
}

fn start_raw_listener(handle: fn(std::net::TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    let port = listener
        .local_addr()
        .expect("bound listener has an address")
        .port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || handle(stream));
        }
    });
    port
}

/// A listener that speaks just enough SMTP to test a login: it greets,
/// offers AUTH PLAIN, accepts one username and password and rejects others
/// with 535. mailin-embedded offers AUTH only over TLS.
pub struct LoginListener {
    pub port: u16,
    /// MAIL commands received, which a check must never send.
    mail_commands: Arc<AtomicUsize>,
}

impl LoginListener {
    pub fn start(username: &str, password: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
        let port = listener
            .local_addr()
            .expect("bound listener has an address")
            .port();
        let accepted = format!(
            "AUTH PLAIN {}",
            base64(&format!("\0{username}\0{password}"))
        );
        let mail_commands = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&mail_commands);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let accepted = accepted.clone();
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || serve_login(stream, &accepted, &counter));
            }
        });
        Self {
            port,
            mail_commands,
        }
    }

    pub fn mail_commands(&self) -> usize {
        self.mail_commands.load(Ordering::SeqCst)
    }
}

fn serve_login(stream: std::net::TcpStream, accepted: &str, mail_commands: &AtomicUsize) {
    use std::io::{BufRead, BufReader, Write};

    let mut writer = stream.try_clone().expect("clone the stream");
    let reader = BufReader::new(stream);
    let _ = writer.write_all(b"220 login-test ESMTP\r\n");
    for line in reader.lines() {
        let Ok(line) = line else { return };
        let command = line.to_ascii_uppercase();
        let reply: &[u8] = if command.starts_with("EHLO") {
            b"250-login-test\r\n250 AUTH PLAIN\r\n"
        } else if command.starts_with("AUTH") && line == accepted {
            b"235 2.7.0 accepted\r\n"
        } else if command.starts_with("AUTH") {
            b"535 5.7.8 invalid credentials\r\n"
        } else if command.starts_with("MAIL") {
            mail_commands.fetch_add(1, Ordering::SeqCst);
            b"250 ok\r\n"
        } else if command.starts_with("QUIT") {
            let _ = writer.write_all(b"221 bye\r\n");
            return;
        } else {
            b"502 not implemented\r\n"
        };
        if writer.write_all(reply).is_err() {
            return;
        }
    }
}

/// Encodes `text` as standard base64 with padding, as AUTH PLAIN sends it.
fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let bits = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for index in 0..4 {
            if index <= chunk.len() {
                encoded.push(ALPHABET[(bits >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
}
