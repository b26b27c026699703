//! A small WebDriver client for browser tests: starts Debian's chromedriver
//! on a loopback port, opens a headless Chromium session through it and
//! drives that session over the W3C WebDriver HTTP API.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long waits for the driver, a page or a download may take.
const WAIT_LIMIT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A running chromedriver with one Chromium session. Dropping it ends the
/// session, which closes Chromium, and stops chromedriver.
pub struct Browser {
    driver: Child,
    driver_address: SocketAddr,
    session_url: String,
    session_id: String,
    client: reqwest::Client,
    /// Holds the profile and download folders until the browser is gone.
    _profile: tempfile::TempDir,
    pub download_dir: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile that
    /// saves downloads to `download_dir` without asking.
    pub async fn start() -> Self {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing; install it with `apt-get install -y chromium chromium-driver`"
            );
        }
        let profile = tempfile::tempdir().expect("create a temporary folder for the browser");
        let user_data_dir = profile.path().join("profile");
        let download_dir = profile.path().join("downloads");
        std::fs::create_dir_all(&download_dir).expect("create the download folder");

        let port = free_loopback_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver_address = SocketAddr::from(([127, 0, 0, 1], port));
        let client = reqwest::Client::new();
        let base = format!("http://{driver_address}");
        wait_for_driver(&client, &base).await;

        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-background-networking",
                            format!("--user-data-dir={}", user_data_dir.display()),
                        ],
                        "prefs": {
                            "download.default_directory": download_dir.display().to_string(),
                            "download.prompt_for_download": false,
                        },
                    },
                },
            },
        });
        let created = send(
            &client,
            reqwest::Method::POST,
            &format!("{base}/session"),
            Some(capabilities),
        )
        .await;
        let session_id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"))
            .to_owned();
        let mut browser = Self {
            driver,
            driver_address,
            session_url: format!("{base}/session/{session_id}"),
            session_id,
            client,
            _profile: profile,
            download_dir,
        };
        browser.allow_downloads().await;
        browser
    }

    /// Lets the headless browser save downloads into `download_dir`.
    async fn allow_downloads(&mut self) {
        let command = json!({
            "cmd": "Browser.setDownloadBehavior",
            "params": {
                "behavior": "allow",
                "downloadPath": self.download_dir.display().to_string(),
            },
        });
        self.post("goog/cdp/execute", command).await;
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/{path}", self.session_url);
        send(&self.client, reqwest::Method::POST, &url, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        let url = format!("{}/{path}", self.session_url);
        send(&self.client, reqwest::Method::GET, &url, None).await
    }

    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.post("window/rect", json!({ "width": width, "height": height }))
            .await;
    }

    /// Opens `url` and waits until the page has loaded.
    pub async fn open(&self, url: &str) {
        self.post("url", json!({ "url": url })).await;
    }

    pub async fn current_url(&self) -> String {
        self.get("url")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn page_source(&self) -> String {
        self.get("source")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Returns the first element matching the CSS `selector`, failing the
    /// test when there is none.
    pub async fn find(&self, selector: &str) -> String {
        let found = self
            .post(
                "element",
                json!({ "using": "css selector", "value": selector }),
            )
            .await;
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element matches {selector:?}: {found}"))
            .to_owned()
    }

    /// Returns every element matching the CSS `selector`.
    pub async fn find_all(&self, selector: &str) -> Vec<String> {
        let found = self
            .post(
                "elements",
                json!({ "using": "css selector", "value": selector }),
            )
            .await;
        found
            .as_array()
            .map(|elements| {
                elements
                    .iter()
                    .filter_map(|element| element[ELEMENT_KEY].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn click(&self, element: &str) {
        self.post(&format!("element/{element}/click"), json!({}))
            .await;
    }

    pub async fn type_text(&self, element: &str, text: &str) {
        self.post(&format!("element/{element}/value"), json!({ "text": text }))
            .await;
    }

    pub async fn text(&self, element: &str) -> String {
        self.get(&format!("element/{element}/text"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn attribute(&self, element: &str, name: &str) -> Option<String> {
        self.get(&format!("element/{element}/attribute/{name}"))
            .await
            .as_str()
            .map(str::to_owned)
    }

    /// Waits until the visible text of the page contains `expected` and
    /// returns that text. The text is read by a script in one step, because
    /// an element found before a navigation ends goes stale.
    pub async fn wait_for_text(&self, expected: &str) -> String {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let script = json!({
                "script": "return document.body ? document.body.innerText : '';",
                "args": [],
            });
            let url = format!("{}/execute/sync", self.session_url);
            // A script sent while a page unloads can fail; the next poll
            // reads the new page.
            let text = match try_send(&self.client, reqwest::Method::POST, &url, Some(script)).await
            {
                Ok(value) => value.as_str().unwrap_or_default().to_owned(),
                Err(error) => error,
            };
            if text.contains(expected) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {expected:?}; it shows:\n{text}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let encoded = self.get("screenshot").await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("a screenshot is base64 text"))
            .expect("decode the screenshot");
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).expect("create the screenshot folder");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Waits for a finished download whose name ends in `extension` and
    /// returns its path.
    pub async fn wait_for_download(&self, extension: &str) -> PathBuf {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let finished = std::fs::read_dir(&self.download_dir)
                .expect("read the download folder")
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .find(|path| path.to_string_lossy().ends_with(extension));
            if let Some(path) = finished {
                return path;
            }
            assert!(
                Instant::now() < deadline,
                "no {extension} file arrived in {}",
                self.download_dir.display()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Browser {
    /// Ends the session with a plain blocking request, because drop cannot
    /// await, then stops chromedriver.
    fn drop(&mut self) {
        if let Ok(mut stream) =
            TcpStream::connect_timeout(&self.driver_address, Duration::from_secs(2))
        {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.session_id, self.driver_address
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut reply = Vec::new();
                let _ = std::io::Read::read_to_end(&mut stream, &mut reply);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Sends one WebDriver command and returns its `value`, failing the test
/// with the driver's message when the command fails.
async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Value {
    try_send(client, method, url, body)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Sends one WebDriver command and returns its `value`, or a message
/// naming the command and the driver's error.
async fn try_send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut request = client.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .map_err(|error| format!("WebDriver {method} {url} failed: {error}"))?;
    let status = response.status();
    let reply: Value = response
        .json()
        .await
        .map_err(|error| format!("WebDriver {method} {url} sent no JSON: {error}"))?;
    if !status.is_success() {
        return Err(format!(
            "WebDriver {method} {url} answered {status}: {reply}"
        ));
    }
    Ok(reply["value"].clone())
}

/// Waits until chromedriver reports that it is ready.
async fn wait_for_driver(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if let Ok(response) = client.get(format!("{base}/status")).send().await {
            if let Ok(status) = response.json::<Value>().await {
                if status["value"]["ready"] == json!(true) {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not become ready at {base}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Returns a loopback port that was free a moment ago.
fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener
        .local_addr()
        .expect("read the bound address")
        .port()
}
