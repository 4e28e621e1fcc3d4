//! A real browser for the console tests: Debian's `chromium`, driven over
//! WebDriver by its `chromedriver` (package `chromium-driver`), headless.
//! Nothing is downloaded. The driver runs in a process group of its own, so
//! the browser goes with it on drop, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::{free_port, PATIENCE};

pub struct Browser {
    pub client: Client,
    driver: Child,
    shots: PathBuf,
}

/// Whether chromium and chromedriver are installed (scripts/test.sh installs them).
pub fn available() -> bool {
    ["chromium", "chromedriver"].iter().all(|program| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl Browser {
    /// A headless chromium at `width`x`height`; `extra` chromium flags.
    pub async fn start(width: u32, height: u32, extra: &[&str]) -> Self {
        use std::os::unix::process::CommandExt;
        let port = free_port().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chromedriver (Debian package chromium-driver)");
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            format!("--window-size={width},{height}"),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        let mut browser = None;
        let mut driver = Some(driver);
        while browser.is_none() {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    browser = Some(Self {
                        client,
                        driver: driver.take().expect("driver"),
                        shots: screenshot_dir(),
                    })
                }
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "chromedriver on {url} did not start a browser: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        browser.expect("browser")
    }

    /// Saves the page as `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Waits until `css` matches an element whose attribute `attr` is `want`.
    pub async fn wait_attr(&self, css: &str, attr: &str, want: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.attr(attr).await.ok().flatten(),
                Err(_) => None,
            };
            if now.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never had {attr}={want:?} (last: {now:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the element `css` has text containing `want`; returns it.
    pub async fn wait_text(&self, css: &str, want: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(want) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never said {want:?} (last: {text:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Clicks the element `locator` finds.
    pub async fn click(&self, locator: Locator<'_>) {
        let element = self
            .client
            .find(locator)
            .await
            .unwrap_or_else(|e| panic!("find {locator:?}: {e}"));
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {locator:?}: {e}"));
    }

    /// Waits until nothing matches `css`.
    pub async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("find")
            .is_empty()
        {
            assert!(Instant::now() < deadline, "{css} is still there");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ends the WebDriver session (the browser exits) and the driver.
    pub async fn close(self) {
        let _ = tokio::time::timeout(PATIENCE, self.client.clone().close()).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver and the browser it started: the whole process group.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-9", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("create target/console-screenshots");
    dir
}
