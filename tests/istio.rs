//! Istio-shaped end to end: a real Envoy configured the way istiod configures it for an
//! `action: CUSTOM` AuthorizationPolicy with a gRPC provider (envoy/istio/: an RBAC
//! filter in shadow mode, then ext_authz enabled by its metadata, no
//! context_extensions, mTLS with `spiffe://cluster.local/ns/<ns>/sa/<sa>`
//! certificates minted here with openssl), in front of an upstream on 127.0.0.1, with
//! hopwarden (in process) resolving service and hop from what Istio sends.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::stack::{envoy_binary, free_port, render, start_envoy_at, Proc};
use common::*;

const PAYMENTS_ID: &str = "spiffe://cluster.local/ns/payments/sa/payments";
const GATEWAY_ID: &str =
    "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

const CONFIG: &str = r#"
http_listen: 127.0.0.1:0
services:
  by_spiffe_pattern: "spiffe://cluster.local/ns/{namespace}/sa/{service}"
  gateways: [ledger.example.com]
  by_host: {ledger.example.com: ledger}
"#;

const POLICY: &str = r#"
service: ledger
rules:
  - id: payments-ledger
    from: { peers: ["spiffe://cluster.local/ns/payments/sa/payments"] }
    to: [{ paths: ["/transactions/**", "/refunds/**"] }]
    when: { hop: mesh }
  - id: payments-never-refund
    effect: deny
    from: { peers: ["spiffe://cluster.local/ns/*/sa/payments"] }
    to: [{ paths: ["/refunds/**"] }]
  - id: partner-reads-at-the-edge
    from: { principals: [partner-app] }
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
    when: { hop: gateway }
  - id: partner-reads-through-the-gateway
    from:
      principals: [partner-app]
      peers: ["spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"]
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
    when: { hop: mesh }
"#;

/// A CA and leaf certificates with the given SANs, made with the openssl CLI.
fn mint_certs(dir: &Path, leaves: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/O=cluster.local/CN=test mesh CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ]
    .concat());
    for (name, san) in leaves {
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext),
            format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={san}\n"),
        )
        .unwrap();
        let (key, csr, pem) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
    }
}

/// The workload behind the sidecars: 200 with what it was given.
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut sock in listener.incoming().flatten() {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
            let principal = head
                .lines()
                .find_map(|l| l.strip_prefix("x-hopwarden-principal: "))
                .unwrap_or("-")
                .to_string();
            let body = format!("upstream principal={principal}");
            let _ = write!(
                sock,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A plain HTTP/1.1 request: status and body.
fn get(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

struct Mesh {
    d: Deployment,
    _hopwarden: TestServer,
    _envoys: Vec<Proc>,
    out_ledger: u16,
    out_orphan: u16,
    client: u16,
    client_http: u16,
}

impl Mesh {
    async fn start() -> Mesh {
        let d = Deployment::new(&[("ledger.yaml", POLICY)]);
        let certs = d.path().join("certs");
        mint_certs(
            &certs,
            &[
                ("ledger", "URI:spiffe://cluster.local/ns/ledger/sa/ledger"),
                ("orphan", "URI:spiffe://legacy.local/ns/orphan/sa/orphan"),
                ("payments", &format!("URI:{PAYMENTS_ID}")),
                ("istio-ingressgateway", &format!("URI:{GATEWAY_ID}")),
                ("ledger-example-com", "DNS:ledger.example.com"),
            ],
        );
        let hopwarden = TestServer::start(d.config("", CONFIG)).await;
        let hw = hopwarden.handle.local_addr.port();
        let envoy = envoy_binary(&repo()).unwrap();
        let app = upstream();
        let hw_http = hopwarden.handle.http_addr.expect("http_listen").port();
        let [admin, ledger_in, orphan_in, out_ledger, out_orphan, gw_admin, gw, client] =
            [(); 8].map(|_| free_port());
        let [gw_http, client_http] = [(); 2].map(|_| free_port());
        let sidecar = render(
            &repo().join("envoy/istio/sidecar.yaml"),
            &[
                (("127.0.0.1", 15000), admin),
                (("0.0.0.0", 15006), ledger_in),
                (("127.0.0.1", 15006), ledger_in),
                (("0.0.0.0", 15007), orphan_in),
                (("127.0.0.1", 15007), orphan_in),
                (("127.0.0.1", 15001), out_ledger),
                (("127.0.0.1", 15002), out_orphan),
                (("127.0.0.1", 9191), hw),
                (("127.0.0.1", 8080), app),
            ],
        )
        .unwrap();
        let gateway = render(
            &repo().join("envoy/istio/ingress-gateway.yaml"),
            &[
                (("127.0.0.1", 15100), gw_admin),
                (("0.0.0.0", 8443), gw),
                (("127.0.0.1", 8443), gw),
                (("127.0.0.1", 15180), client),
                (("0.0.0.0", 8444), gw_http),
                (("127.0.0.1", 8444), gw_http),
                (("127.0.0.1", 15181), client_http),
                (("127.0.0.1", 9193), hw_http),
                (("127.0.0.1", 9191), hw),
                (("127.0.0.1", 15006), ledger_in),
            ],
        )
        .unwrap();
        let envoys = vec![
            start_envoy_at(&envoy, "sidecar", &sidecar, d.path(), d.path(), admin).unwrap(),
            start_envoy_at(
                &envoy,
                "ingress-gateway",
                &gateway,
                d.path(),
                d.path(),
                gw_admin,
            )
            .unwrap(),
        ];
        Mesh {
            d,
            _hopwarden: hopwarden,
            _envoys: envoys,
            out_ledger,
            out_orphan,
            client,
            client_http,
        }
    }

    /// The decision log once `n` lines are in it.
    async fn decisions(&self, n: usize) -> Vec<serde_json::Value> {
        let all = eventually(Duration::from_secs(5), || async {
            self.d.decisions().len() >= n
        })
        .await;
        let lines = self.d.decisions();
        assert!(
            all && lines.len() == n,
            "want {n} decisions, got {lines:#?}"
        );
        lines
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_custom_provider_end_to_end() {
    let m = Mesh::start().await;
    let ledger_host = "ledger.ledger.svc.cluster.local:8080";

    // 1. payments -> ledger's sidecar: service from the destination's SPIFFE ID by
    // pattern, hop mesh, allowed by a `from.peers` rule; the upstream sees the caller.
    let (code, body) = get(m.out_ledger, ledger_host, "/transactions/42", &[]);
    assert_eq!(
        (code, body.as_str()),
        (200, format!("upstream principal={PAYMENTS_ID}").as_str())
    );
    let log = m.decisions(1).await;
    let d = &log[0];
    assert_eq!(
        (
            &d["service"],
            &d["hop"],
            &d["peer"],
            &d["rule"],
            &d["decision"]
        ),
        (
            &"ledger".into(),
            &"mesh".into(),
            &PAYMENTS_ID.into(),
            &"payments-ledger".into(),
            &"allow".into()
        ),
        "{d}"
    );

    // 2. The deny rule wins over the allow rule that also matches.
    let (code, _) = get(m.out_ledger, ledger_host, "/refunds/7", &[]);
    assert_eq!(code, 403);
    let log = m.decisions(2).await;
    assert_eq!(
        (&log[1]["rule"], &log[1]["reason"]),
        (&"payments-never-refund".into(), &"deny_rule".into())
    );

    // 3. A path outside the CUSTOM rule never reaches hopwarden: the upstream answers
    // and no decision is logged (the next check is the third line, not the fourth).
    let (code, body) = get(m.out_ledger, ledger_host, "/public/about", &[]);
    assert_eq!((code, body.as_str()), (200, "upstream principal=-"));
    let (code, _) = get(m.out_ledger, ledger_host, "/transactions/43", &[]);
    assert_eq!(code, 200);
    let log = m.decisions(3).await;
    assert_eq!(log[2]["path"], "/transactions/43");
    assert!(log.iter().all(|d| d["path"] != "/public/about"), "{log:#?}");

    // 4. An unknown destination identity (no mapping names the orphan workload) is
    // denied, even with a Host naming ledger, whose policy would allow payments.
    let (code, body) = get(m.out_orphan, ledger_host, "/transactions/42", &[]);
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("upstream"), "{body}");
    let log = m.decisions(4).await;
    assert_eq!(
        (&log[3]["reason"], &log[3]["service"]),
        (&"unknown_service".into(), &serde_json::Value::Null)
    );
    assert!(
        log[3]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("destination workload"),
        "{}",
        log[3]
    );

    // 5. Through the ingress gateway: hop gateway (its certificate's DNS SAN is in
    // services.gateways), service from the host; then ledger's sidecar checks again,
    // hop mesh, with the gateway's SPIFFE ID as the peer.
    let token = token("partner-app", "ledger", "");
    let bearer = format!("Bearer {token}");
    let (code, body) = get(
        m.client,
        "ledger.example.com",
        "/transactions/9",
        &[("authorization", &bearer)],
    );
    assert_eq!(
        (code, body.as_str()),
        (200, "upstream principal=partner-app")
    );
    let log = m.decisions(6).await;
    let (edge, inner) = (&log[4], &log[5]);
    assert_eq!(
        (&edge["hop"], &edge["service"], &edge["rule"], &edge["peer"]),
        (
            &"gateway".into(),
            &"ledger".into(),
            &"partner-reads-at-the-edge".into(),
            &serde_json::Value::Null
        ),
        "{edge}"
    );
    assert_eq!(
        (
            &inner["hop"],
            &inner["service"],
            &inner["rule"],
            &inner["peer"]
        ),
        (
            &"mesh".into(),
            &"ledger".into(),
            &"partner-reads-through-the-gateway".into(),
            &GATEWAY_ID.into()
        ),
        "{inner}"
    );
    // No token at the gateway: 401 there, the sidecar never asked.
    let (code, _) = get(m.client, "ledger.example.com", "/transactions/9", &[]);
    assert_eq!(code, 401);
    let log = m.decisions(7).await;
    assert_eq!(
        (&log[6]["hop"], &log[6]["reason"]),
        (&"gateway".into(), &"missing_credential".into())
    );

    // 6. The same through a gateway on the HTTP provider (pathPrefix /gateway/-): the
    // hop and the absent service come in the path, the service from the host; a forged
    // identity header is replaced before the upstream sees it.
    let (code, body) = get(
        m.client_http,
        "ledger.example.com",
        "/transactions/10",
        &[
            ("authorization", &bearer),
            ("x-hopwarden-principal", "admin"),
        ],
    );
    assert_eq!(
        (code, body.as_str()),
        (200, "upstream principal=partner-app")
    );
    let log = m.decisions(9).await;
    let (edge, inner) = (&log[7], &log[8]);
    assert_eq!(
        (&edge["hop"], &edge["service"], &edge["rule"], &edge["path"]),
        (
            &"gateway".into(),
            &"ledger".into(),
            &"partner-reads-at-the-edge".into(),
            &"/transactions/10".into()
        ),
        "{edge}"
    );
    assert_eq!(
        inner["rule"], "partner-reads-through-the-gateway",
        "{inner}"
    );
    let (code, _) = get(m.client_http, "ledger.example.com", "/transactions/10", &[]);
    assert_eq!(code, 401);
}
