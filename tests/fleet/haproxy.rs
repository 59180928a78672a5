//! The load balancer in front of the fleet: haproxy started with its configuration
//! (round robin, WebSocket upgrades, health checks on `/readyz`), and its view of each
//! instance read from its stats page.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::HOW;
use crate::checks::wait_for;
use crate::fleet::{Fleet, tail};
use crate::requests::get;

impl Fleet {
    pub(crate) fn start_haproxy(&mut self) {
        let dir = self.dir.as_ref().unwrap().path();
        let [a, b] = [self.instances[0].port, self.instances[1].port];
        let config = format!(
            "global\n\
             \x20   maxconn 1000\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n\
             \x20   timeout tunnel 1h\n\
             \x20   timeout check 3s\n\
             frontend fleet\n\
             \x20   bind 127.0.0.1:{lb}\n\
             \x20   default_backend handset\n\
             backend handset\n\
             \x20   balance roundrobin\n\
             \x20   option httpchk GET /readyz\n\
             \x20   default-server inter 200ms fall 1 rise 2\n\
             \x20   server a 127.0.0.1:{a} check\n\
             \x20   server b 127.0.0.1:{b} check\n\
             listen stats\n\
             \x20   bind 127.0.0.1:{stats}\n\
             \x20   stats enable\n\
             \x20   stats uri /stats\n",
            lb = self.lb_port,
            stats = self.stats_port,
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(&self.haproxy_log).unwrap();
        let child = Command::new(&self.setup.haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}: {HOW}", self.setup.haproxy));
        self.haproxy = Some(child);
    }

    /// haproxy's view of server `id`: `UP`, `DOWN` (or a transition such as `UP 1/2`).
    pub(crate) async fn lb_status(&self, id: &str) -> Option<String> {
        let csv = get(&format!("http://127.0.0.1:{}/stats;csv", self.stats_port))
            .await
            .ok()?
            .body;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let status = header.iter().position(|c| *c == "status")?;
        lines.find_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields.first() == Some(&"handset") && fields.get(1) == Some(&id))
                .then(|| fields.get(status).map(|s| (*s).to_owned()))
                .flatten()
        })
    }

    /// Waits until haproxy shows server `id` as exactly `want` (`UP` or `DOWN`).
    pub(crate) async fn wait_lb(&mut self, id: &str, want: &str) {
        if let Some(status) = self.haproxy.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "haproxy exited ({status}):\n{}",
                tail(&self.haproxy_log, 40)
            );
        }
        let what = format!("haproxy shows server {id} {want}");
        wait_for(Duration::from_secs(20), &what, async || {
            (self.lb_status(id).await.as_deref() == Some(want)).then_some(())
        })
        .await;
    }

    /// `http://127.0.0.1:<lb>` + `path`: also the fleet's `PUBLIC_URL`.
    pub(crate) fn lb_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.lb_port)
    }
}
