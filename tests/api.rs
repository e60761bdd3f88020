//! The HTTP API: tokens of two counties, a viewer and an admin against every endpoint — no
//! cross-county read or write, no write without the role, every write audited; dispositions,
//! silences and escalation of warnings left without a disposition.

mod support;

use std::time::Duration;

use support::*;

fn sha(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Client {
    base: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Client {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.rt.block_on(async {
            let mut r = self
                .http
                .request(method.parse().unwrap(), format!("{}{path}", self.base));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            if let Some(b) = body {
                r = r.json(&b);
            }
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (
                status,
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
            )
        })
    }
    fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        self.call("GET", path, token, None)
    }
}

#[test]
fn tokens_see_and_change_only_their_counties() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path(), 0);
    let sim = Simulator::start(17, 900);
    let cases: Vec<serde_json::Value> = sim.planted()["cases"].as_array().unwrap().clone();
    let four = [
        "income_below_line",
        "wage_income_drop",
        "medical_burden",
        "medical_burden_policy_lifted",
        "medical_burden_policy_ordinary",
        "water_outage_long",
        "water_outage_spread",
    ];
    // County A: the one with the most cases (one is acknowledged, the others silenced).
    let mut per_county: std::collections::BTreeMap<String, usize> = Default::default();
    for c in cases
        .iter()
        .filter(|c| four.contains(&c["rule"].as_str().unwrap()))
    {
        *per_county
            .entry(c["county"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let mut ranked: Vec<(usize, String)> = per_county.into_iter().map(|(c, n)| (n, c)).collect();
    ranked.sort();
    let a = ranked.last().unwrap().1.clone();
    let b = ranked[0].1.clone();
    assert!(
        ranked.last().unwrap().0 >= 2,
        "county A needs two cases: {ranked:?}"
    );
    std::fs::write(
        dir.path().join("tokens.toml"),
        format!(
            "[[tokens]]\nname = \"op-a\"\nsha256 = \"{}\"\nrole = \"operator\"\ncounties = [\"{a}\"]\n\n[[tokens]]\nname = \"op-b\"\nsha256 = \"{}\"\nrole = \"operator\"\ncounties = [\"{b}\"]\n\n[[tokens]]\nname = \"view-a\"\nsha256 = \"{}\"\nrole = \"viewer\"\ncounties = [\"{a}\"]\n\n[[tokens]]\nname = \"admin\"\nsha256 = \"{}\"\nrole = \"admin\"\n",
            sha("secret-a"),
            sha("secret-b"),
            sha("secret-view"),
            sha("secret-admin")
        ),
    )
    .unwrap();
    let cfg = config(dir.path(), sim.addr, smtp.port);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "create_pseudonym_key = true",
            &format!(
                "create_pseudonym_key = true\ntokens_file = \"{}\"",
                dir.path().join("tokens.toml").display()
            ),
        )
        .replace(
            "retry_max = \"2s\"",
            "retry_max = \"2s\"\nescalate_after = \"8s\"\nescalate_to = [\"prefecture\"]\nrepeat_interval = \"5s\"",
        )
        + "\n[[receivers]]\nname = \"prefecture\"\ntype = \"file\"\npath = \"prefecture.log\"\n";
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start(&cfg, &dir.path().join("daemon.log"));
    let c = Client {
        base: format!("http://{}", d.http),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        http: reqwest::Client::new(),
    };
    let (op_a, op_b, view_a, admin) = (
        Some("secret-a"),
        Some("secret-b"),
        Some("secret-view"),
        Some("secret-admin"),
    );
    let all = wait_for(Duration::from_secs(60), "alerts in two counties", || {
        let (s, v) = c.get("/api/v1/alerts?status=firing&per_page=500", admin);
        let items = v["items"].as_array()?.clone();
        (s == 200
            && items.iter().any(|x| x["county"] == a.as_str())
            && items.iter().any(|x| x["county"] == b.as_str()))
        .then_some(items)
    });
    let of = |county: &str| {
        all.iter()
            .filter(|x| x["county"] == county)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (in_a, in_b) = (of(&a), of(&b));
    let fp_a = in_a[0]["fingerprint"].as_str().unwrap().to_string();
    let fp_b = in_b[0]["fingerprint"].as_str().unwrap().to_string();

    // Open endpoints need no token and name no household.
    assert_eq!(c.get("/healthz", None).0, 200);
    assert_eq!(c.get("/readyz", None).0, 200);
    let metrics = get_text(&format!("http://{}/metrics", d.http)).unwrap();
    assert!(!metrics.contains("household=") && !metrics.contains(&fp_a));
    // No token, a wrong token.
    assert_eq!(c.get("/api/v1/alerts", None).0, 401);
    assert_eq!(c.get("/api/v1/alerts", Some("guess")).0, 401);

    // Lists hold only the token's county, all of its alerts. The feeds are still being
    // polled, so alerts may fire between two requests: county A's list is compared with
    // the administrator's lists read just before and after it, once those two agree.
    wait_for(
        Duration::from_secs(60),
        "county A's list between equal lists",
        || {
            let states = |v: &serde_json::Value| -> Option<Vec<(String, String)>> {
                let items = v["items"].as_array()?;
                let pairs = items
                    .iter()
                    .map(|x| (x["fingerprint"].to_string(), x["status"].to_string()));
                Some(pairs.collect())
            };
            let before = states(&c.get("/api/v1/alerts?per_page=500", admin).1)?;
            let (s, v) = c.get("/api/v1/alerts?per_page=500", op_a);
            let (_, after) = c.get("/api/v1/alerts?per_page=500", admin);
            assert_eq!(s, 200);
            let mine = v["items"].as_array().unwrap();
            assert!(mine.iter().all(|x| x["county"] == a.as_str()));
            let everyone = after["items"].as_array()?;
            let in_a = everyone
                .iter()
                .filter(|x| x["county"] == a.as_str())
                .count();
            let steady = states(&after)? == before;
            (steady && v["total"].as_u64()? as usize == in_a && mine.len() == in_a).then_some(())
        },
    );
    assert_eq!(c.get(&format!("/api/v1/alerts/{fp_b}"), op_a).0, 404);
    assert_eq!(c.get(&format!("/api/v1/alerts/{fp_b}"), view_a).0, 404);
    let (s, v) = c.get(&format!("/api/v1/alerts/{fp_a}"), view_a);
    assert_eq!(s, 200);
    assert!(v["evidence"].is_object() && v["history"].is_array() && v["description"].is_string());
    let (s, v) = c.get("/api/v1/alerts?per_page=1&page=2", admin);
    assert_eq!(
        (s, v["items"].as_array().unwrap().len(), v["page"].as_u64()),
        (200, 1, Some(2))
    );

    // Acknowledgements: a viewer may not, another county may not, the county's operator may.
    let ack = serde_json::json!({"disposition": "enrolled", "note": "入户核实，纳入监测"});
    assert_eq!(
        c.call(
            "POST",
            &format!("/api/v1/alerts/{fp_a}/ack"),
            view_a,
            Some(ack.clone())
        )
        .0,
        403
    );
    assert_eq!(
        c.call(
            "POST",
            &format!("/api/v1/alerts/{fp_a}/ack"),
            op_b,
            Some(ack.clone())
        )
        .0,
        404
    );
    assert_eq!(
        c.call(
            "POST",
            &format!("/api/v1/alerts/{fp_a}/ack"),
            op_a,
            Some(serde_json::json!({"disposition": "maybe"}))
        )
        .0,
        400
    );
    let (s, v) = c.call(
        "POST",
        &format!("/api/v1/alerts/{fp_a}/ack"),
        op_a,
        Some(ack),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ack"]["disposition"], "enrolled");
    assert_eq!(v["ack"]["by"], "op-a");

    // Silences: within the token's county only.
    let silence = |county: &str| serde_json::json!({"matchers": [format!("county={county}")], "ends_at": "1h", "comment": "入户核实中"});
    assert_eq!(
        c.call("POST", "/api/v1/silences", view_a, Some(silence(&a)))
            .0,
        403
    );
    assert_eq!(
        c.call("POST", "/api/v1/silences", op_a, Some(silence(&b)))
            .0,
        403
    );
    assert_eq!(c.call("POST", "/api/v1/silences", op_a, Some(serde_json::json!({"matchers": ["rule=medical_burden"], "ends_at": "1h", "comment": "x"}))).0, 403);
    let (s, v) = c.call("POST", "/api/v1/silences", op_a, Some(silence(&a)));
    assert_eq!(s, 201, "{v}");
    let sid = v["id"].as_str().unwrap().to_string();
    assert!(
        c.get("/api/v1/silences", op_b).1["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(c.get("/api/v1/silences", view_a).1["total"], 1);
    assert_eq!(
        c.call("DELETE", &format!("/api/v1/silences/{sid}"), op_b, None)
            .0,
        404
    );

    // Escalation after 8 s without a disposition: county B escalates; county A is silenced,
    // and its acknowledged alert would not escalate anyway.
    let prefecture = dir.path().join("data/prefecture.log");
    wait_for(Duration::from_secs(60), "escalations", || {
        let t = std::fs::read_to_string(&prefecture).ok()?;
        (t.matches("\n=== ").count() + 1 >= in_b.len()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let t = std::fs::read_to_string(&prefecture).unwrap();
    assert!(t.contains("逾期未处置·请督办"), "{t}");
    assert!(
        t.contains(&format!("county={b}")) && !t.contains(&format!("county={a}")),
        "{t}"
    );
    let m = d.metrics();
    assert!(
        metric_value(
            &m,
            "guardline_notifications_suppressed_total{reason=\"silenced\"}"
        ) >= 1.0,
        "{m}"
    );
    let rule_a = in_a[0]["rule"].as_str().unwrap();
    assert_eq!(
        metric_value(
            &m,
            &format!("guardline_rule_precision_ratio{{rule=\"{rule_a}\"}}")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        c.call("DELETE", &format!("/api/v1/silences/{sid}"), op_a, None)
            .0,
        204
    );

    // Reminders: a warning without a disposition is mailed again; the acknowledged one is not.
    let mails = smtp.messages();
    let count = |fp: &str| {
        mails
            .iter()
            .filter(|m| {
                m["body"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("预警编号：{fp}"))
            })
            .count()
    };
    assert_eq!(count(&fp_a), 1, "a disposition stops the reminders");
    assert!(count(&fp_b) >= 2, "no reminder for an open warning");
    let ids: Vec<&str> = mails
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert!(ids.iter().any(|i| i.contains(".repeat1@")), "{ids:?}");

    // Reloading needs an admin token once tokens are configured.
    assert_eq!(c.call("POST", "/-/reload", None, None).0, 401);
    assert_eq!(c.call("POST", "/-/reload", op_a, None).0, 403);
    assert_eq!(c.call("POST", "/-/reload", admin, None).0, 200);

    // The notification log and the audit log.
    let (s, v) = c.get("/api/v1/notifications?per_page=500", op_a);
    assert_eq!(s, 200);
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["county"] == a.as_str())
    );
    assert!(v["total"].as_u64().unwrap() > 0);
    assert_eq!(c.get("/api/v1/audit", op_a).0, 403);
    let (s, v) = c.get("/api/v1/audit", admin);
    assert_eq!(s, 200);
    let actions: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec!["reload", "silence.expire", "silence.create", "ack"]
    );
    assert!(d.stop().success());

    // `guardline report`: precision per rule from the dispositions.
    let out = std::process::Command::new(BIN)
        .args(["report", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == rule_a)
        .unwrap();
    assert_eq!(row["enrolled"], 1);
    assert_eq!(row["precision"], 1.0);
}
