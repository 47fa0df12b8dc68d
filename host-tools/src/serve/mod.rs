//! `ember serve`: a model behind the KServe v2 / Triton HTTP protocol, batched by the runtime's
//! [`ember_runtime::Batcher`]; and the pieces `ember loadgen` drives it with.

pub mod http;
pub mod kserve;
pub mod loadgen;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A server running on background threads (for `ember loadgen` and tests).
pub struct Running {
    pub addr: SocketAddr,
    pub model: Arc<kserve::ModelServer>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Running {
    /// Binds `addr` (port 0: any free port) and serves `model` on it.
    pub fn start(
        model: kserve::ModelServer,
        addr: &str,
        max_conns: usize,
    ) -> std::io::Result<Running> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let model = Arc::new(model);
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (model.clone(), stop.clone());
        let handler = Arc::new(move |r: &http::Request| m.handle(r));
        let accept = std::thread::Builder::new()
            .name("ember-accept".into())
            .spawn(move || http::serve(listener, handler, s, max_conns))?;
        Ok(Running { addr, model, stop, accept: Some(accept) })
    }

    /// Blocks while the server runs (until [`stop`](Self::stop) from another thread).
    pub fn wait(&mut self) {
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }

    /// Stops accepting connections (open ones finish their current request).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        http::wake(self.addr);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
