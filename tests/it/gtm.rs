//! The GTM starter project (the repository's own `ferry.toml`, `models/`
//! and `sql/`) end to end: planted records served by the embedded HubSpot
//! and marketing emulators, extracted over HTTP, seeded, modelled, tested
//! and synced back by `ferry build` (through `ferry::demo::run_on`), then
//! checked against hand-computed answers. And `ferry demo` / `ferry
//! generate` themselves.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use serde_json::{Map, Value};

use ferry::demo::generate::{
    Campaign, Company, Contact, Dataset, Deal, EmailEvent, Lead, Person, Touch, now,
};
use ferry::demo::{self, Demo, DemoOptions};
use ferry::lake::Lake;
use ferry::project::Project;

const DAY: i64 = 86_400;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Rows of a query over the demo's lake, as JSON objects.
async fn rows(demo: &Demo, sql: &str) -> Vec<Map<String, Value>> {
    let ctx = ferry::engine::session(&demo.lake).await.unwrap();
    let ws = ferry::models::Workspace::load(&demo.project, &[]).unwrap();
    ws.register_views(&ctx, &demo.lake).await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    for b in &batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice::<Vec<Map<String, Value>>>(&bytes).unwrap()
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => String::new(),
        Some(x) => x.to_string(),
    }
}

/// REST streams have no declared schema: a field null in every record
/// never lands as a column. Give each marketing and sequencer field one
/// value (a form fill from an unrelated company, a replied email).
fn complete(mut data: Dataset) -> Dataset {
    if !data.leads.iter().any(|l| l.website.is_some()) {
        let mut l = lead(
            "filler@filler.example",
            "Fil",
            "Ler",
            "Filler",
            Some("filler.example"),
        );
        l.country = "France";
        data.leads.push(l);
    }
    if data.touches.is_empty() {
        if data.campaigns.is_empty() {
            data.campaigns.push(campaign("google", "cpc"));
        }
        data.touches.push(touch(0, 0, now().timestamp() - 50 * DAY));
    }
    if !data.email_events.iter().any(|e| e.outcome.is_some()) {
        let at = now().timestamp() - 50 * DAY;
        data.email_events.push(EmailEvent {
            contact: 0,
            sequence: 0,
            step: 1,
            kind: "replied",
            outcome: Some("interested"),
            occurred_at: at,
            arrived_at: at,
        });
    }
    data
}

/// Build the starter project over `data` in a fresh lake.
async fn build(data: Dataset) -> (tempfile::TempDir, Demo) {
    let data = complete(data);
    let tmp = tempfile::tempdir().unwrap();
    let lake = Lake::from_url(
        tmp.path().join("lake").to_str().unwrap(),
        tmp.path(),
        &Default::default(),
    )
    .unwrap();
    let project = Project::load(root()).unwrap();
    let demo = demo::run_on(
        project,
        lake,
        Arc::new(data),
        0.0,
        &DemoOptions {
            threads: 2,
            ..DemoOptions::default()
        },
    )
    .await
    .unwrap();
    (tmp, demo)
}

fn company(
    name: &str,
    domain: Option<&str>,
    industry: Option<&'static str>,
    country: Option<&'static str>,
) -> Company {
    Company {
        name: name.to_string(),
        domain: domain.map(str::to_string),
        true_domain: String::new(),
        industry,
        employees: Some(120),
        country,
        created_at: now().timestamp() - 300 * DAY,
        duplicate_of: None,
    }
}

fn contact(email: &str, first: &'static str, last: &'static str, company: u32) -> Contact {
    let t = now().timestamp() - 200 * DAY;
    Contact {
        first,
        last,
        email: email.to_string(),
        title: "",
        country: "",
        state: "",
        company,
        created_at: t,
        updated_at: t,
        owner: None,
        lifecycle: "lead",
        duplicate_of: None,
    }
}

fn lead(
    email: &str,
    first: &'static str,
    last: &'static str,
    company: &str,
    website: Option<&str>,
) -> Lead {
    Lead {
        email: email.to_string(),
        first,
        last,
        company: company.to_string(),
        website: website.map(str::to_string),
        title: "",
        country: "",
        form: "Ebook",
        submitted_at: now().timestamp() - 100 * DAY,
        same_as: None,
    }
}

fn campaign(utm_source: &'static str, utm_medium: &'static str) -> Campaign {
    Campaign {
        channel: 0,
        name: format!("{utm_source} / {utm_medium}"),
        utm_source,
        utm_medium,
        started_at: now().timestamp() - 360 * DAY,
        budget: 1000,
    }
}

fn touch(contact: u32, campaign: u16, at: i64) -> Touch {
    Touch {
        person: Person::Contact(contact),
        campaign,
        kind: 0,
        spelling: 0,
        occurred_at: at,
        arrived_at: at,
        shouted: false,
    }
}

/// Every spelling the dictionaries promise to recognize, through the whole
/// route: countries, US states, industries, domains, emails, free mail, and
/// job titles to persona and seniority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalization_dictionaries_map_every_variant() {
    let mut data = Dataset::default();
    let domains: &[(&str, &str)] = &[
        ("https://www.Acme.com/about", "acme.com"),
        ("www.globex.io", "globex.io"),
        ("INITECH.CO", "initech.co"),
        ("http://hooli.ai/pricing?x=1", "hooli.ai"),
        ("  umbrella.net ", "umbrella.net"),
    ];
    let industries: &[(&'static str, &str)] = &[
        ("SaaS", "Software"),
        ("Computer Software", "Software"),
        ("Fintech", "Financial Services"),
        ("Banking", "Financial Services"),
        ("Health Care", "Healthcare"),
        ("IT & Services", "IT Services"),
        ("Ecommerce", "Retail & E-commerce"),
        ("Higher Education", "Education"),
    ];
    for (i, (raw, _)) in industries.iter().enumerate() {
        let domain = domains.get(i).map(|d| d.0);
        data.companies.push(company(
            &format!("Company {i}"),
            domain,
            Some(raw),
            Some("USA"),
        ));
    }
    let countries: &[(&'static str, &str, &str)] = &[
        ("United States", "US", "United States"),
        ("US", "US", "United States"),
        ("USA", "US", "United States"),
        ("U.S.A.", "US", "United States"),
        ("U.S.", "US", "United States"),
        ("United States of America", "US", "United States"),
        ("us", "US", "United States"),
        (" usa ", "US", "United States"),
        ("UK", "GB", "United Kingdom"),
        ("Great Britain", "GB", "United Kingdom"),
        ("England", "GB", "United Kingdom"),
        ("Deutschland", "DE", "Germany"),
        ("Holland", "NL", "Netherlands"),
        ("The Netherlands", "NL", "Netherlands"),
        ("Brasil", "BR", "Brazil"),
        ("España", "ES", "Spain"),
    ];
    let states: &[(&'static str, &str)] = &[
        ("Calif.", "CA"),
        ("california", "CA"),
        ("N.Y.", "NY"),
        ("Mass.", "MA"),
        ("texas", "TX"),
        ("FL", "FL"),
    ];
    // (title, persona, seniority)
    let titles: &[(&'static str, &str, &str)] = &[
        ("VP of Marketing", "Marketing Leader", "VP"),
        ("VP Marketing", "Marketing Leader", "VP"),
        ("Vice President, Marketing", "Marketing Leader", "VP"),
        ("vp, marketing", "Marketing Leader", "VP"),
        ("Vice President of Marketing", "Marketing Leader", "VP"),
        ("CMO", "Marketing Leader", "C-Level"),
        ("C.M.O.", "Marketing Leader", "C-Level"),
        ("Chief Marketing Officer", "Marketing Leader", "C-Level"),
        ("Head of Demand Generation", "Marketing Leader", "Director"),
        ("Dir. Demand Gen", "Marketing Leader", "Director"),
        ("Marketing Manager", "Marketing Practitioner", "Manager"),
        (
            "Content Marketer",
            "Marketing Practitioner",
            "Individual Contributor",
        ),
        ("RevOps Manager", "Revenue Operations", "Manager"),
        (
            "Marketing Operations Manager",
            "Revenue Operations",
            "Manager",
        ),
        (
            "Director, Revenue Operations",
            "Revenue Operations",
            "Director",
        ),
        ("Chief Revenue Officer", "Sales Leader", "C-Level"),
        ("VP Sales", "Sales Leader", "VP"),
        ("SDR", "Sales Rep", "Individual Contributor"),
        ("Sr. AE", "Sales Rep", "Individual Contributor"),
        ("Founder/CEO", "Executive", "C-Level"),
        (
            "Software Engineer",
            "Technical User",
            "Individual Contributor",
        ),
        ("VP of Engineering", "Technical Leader", "VP"),
        ("Intern", "Other", "Entry"),
    ];
    let n = countries.len().max(states.len()).max(titles.len());
    for i in 0..n {
        let mut c = contact(
            &format!("  Person.{i}@Company{}.EXAMPLE.com ", i % 3),
            "Pat",
            "Doe",
            (i % industries.len()) as u32,
        );
        c.country = countries.get(i).map(|x| x.0).unwrap_or("");
        c.title = titles.get(i).map(|x| x.0).unwrap_or("");
        if let Some((st, _)) = states.get(i) {
            c.country = "United States";
            c.state = st;
        }
        data.contacts.push(c);
    }
    // States need a US country; give their contacts' countries back to the
    // country cases through leads' own copies below.
    data.contacts
        .push(contact("someone@Gmail.com", "Sam", "Free", 0));
    data.contacts
        .push(contact("other@outlook.com", "Olu", "Free", 1));
    for (i, (variant, _, _)) in countries.iter().enumerate() {
        let mut l = lead(
            &format!("lead{i}@country.example"),
            "Lee",
            "Lead",
            "Country Co",
            None,
        );
        l.country = variant;
        data.leads.push(l);
    }
    data.campaigns.push(campaign("google", "cpc"));
    let (_tmp, demo) = build(data).await;

    let contacts = rows(&demo, "select * from stg_hubspot__contacts").await;
    let by_email: BTreeMap<String, &Map<String, Value>> =
        contacts.iter().map(|r| (s(r.get("email")), r)).collect();
    for i in 0..n {
        let email = format!("person.{i}@company{}.example.com", i % 3);
        let r = by_email
            .get(&email)
            .unwrap_or_else(|| panic!("{email} not in staging: {by_email:?}"));
        assert_eq!(
            s(r.get("email_domain")),
            format!("company{}.example.com", i % 3)
        );
        assert_eq!(r.get("is_free_email"), Some(&Value::Bool(false)), "{email}");
        if let Some((st, code)) = states.get(i) {
            assert_eq!(s(r.get("state_code")), *code, "state {st:?}");
        }
    }
    for free in ["someone@gmail.com", "other@outlook.com"] {
        assert_eq!(
            by_email[free].get("is_free_email"),
            Some(&Value::Bool(true)),
            "{free}"
        );
    }
    let leads = rows(
        &demo,
        "select email, country_code, country_name from stg_marketing__leads",
    )
    .await;
    for (i, (variant, code, name)) in countries.iter().enumerate() {
        let email = format!("lead{i}@country.example");
        let r = leads.iter().find(|r| s(r.get("email")) == email).unwrap();
        assert_eq!(
            (s(r.get("country_code")), s(r.get("country_name"))),
            (code.to_string(), name.to_string()),
            "country {variant:?}"
        );
    }
    // Titles through the persona rules, as dim_people shows them.
    let people = rows(
        &demo,
        "select email, job_title, persona, seniority from dim_people",
    )
    .await;
    for (i, (title, persona, seniority)) in titles.iter().enumerate() {
        let email = format!("person.{i}@company{}.example.com", i % 3);
        let r = people.iter().find(|r| s(r.get("email")) == email).unwrap();
        assert_eq!(
            (s(r.get("persona")), s(r.get("seniority"))),
            (persona.to_string(), seniority.to_string()),
            "title {title:?}"
        );
    }
    let companies = rows(
        &demo,
        "select company_name, domain, industry from stg_hubspot__companies",
    )
    .await;
    for (i, (raw, industry)) in industries.iter().enumerate() {
        let r = companies
            .iter()
            .find(|r| s(r.get("company_name")) == format!("Company {i}"))
            .unwrap();
        assert_eq!(s(r.get("industry")), *industry, "industry {raw:?}");
        if let Some((raw, clean)) = domains.get(i) {
            assert_eq!(s(r.get("domain")), *clean, "domain {raw:?}");
        }
    }
    demo.stop();
}

/// Planted duplicates: the same person under another case of the address,
/// under a personal address with the same name and company domain, and a
/// namesake with another work address (not merged); the same company with
/// a domain spelled otherwise and without a domain (matched by name and
/// country), and a namesake company in another country (not merged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_resolution_merges_planted_duplicates() {
    let mut data = Dataset::default();
    data.companies.push(company(
        "Acme Analytics",
        Some("acme.com"),
        Some("Software"),
        Some("United States"),
    ));
    data.companies.push(company(
        "Acme Analytics",
        Some("https://www.ACME.com/"),
        None,
        Some("USA"),
    ));
    data.companies
        .push(company("acme analytics", None, None, Some("US")));
    data.companies
        .push(company("Acme Analytics", None, None, Some("Germany")));
    data.companies.push(company(
        "Globex",
        Some("globex.io"),
        Some("Banking"),
        Some("UK"),
    ));
    let mut ava = contact("ava.chen@acme.com", "Ava", "Chen", 0);
    ava.country = "USA";
    data.contacts.push(ava);
    data.contacts
        .push(contact("ben.baker@globex.io", "Ben", "Baker", 4));
    // Same address, other case and padding.
    let mut l0 = lead(
        " AVA.CHEN@ACME.COM ",
        "Ava",
        "Chen",
        "Acme Analytics",
        Some("acme.com"),
    );
    l0.country = "Deutschland";
    l0.submitted_at = now().timestamp() - 10 * DAY;
    data.leads.push(l0);
    // Personal address, same name, company website acme.com.
    data.leads.push(lead(
        "avachen@gmail.com",
        "Ava",
        "Chen",
        "Acme",
        Some("https://www.acme.com/pricing"),
    ));
    // A namesake with another work address: another person; and with two
    // Ben Bakers at globex.io, a personal address cannot say which one.
    data.leads.push(lead(
        "ava.chen2@globex.io",
        "Ava",
        "Chen",
        "Globex",
        Some("globex.io"),
    ));
    data.leads.push(lead(
        "ben.baker2@globex.io",
        "Ben",
        "Baker",
        "Globex",
        Some("globex.io"),
    ));
    data.leads.push(lead(
        "benbaker@hotmail.com",
        "Ben",
        "Baker",
        "Globex",
        Some("https://globex.io"),
    ));
    // Personal address, same name, another company: another person.
    data.leads.push(lead(
        "ava@yahoo.com",
        "Ava",
        "Chen",
        "Initech",
        Some("initech.co"),
    ));
    data.campaigns.push(campaign("google", "cpc"));
    let (_tmp, demo) = build(data).await;

    let ids = rows(&demo, "select r.email, r.source, i.person_id, i.matched_by from int_person_records r join int_identity i on i.record_id = r.record_id").await;
    let person = |email: &str, source: &str| -> (String, String) {
        let r = ids
            .iter()
            .find(|r| s(r.get("email")) == email && s(r.get("source")) == source)
            .unwrap_or_else(|| panic!("no {source} record {email}: {ids:?}"));
        (s(r.get("person_id")), s(r.get("matched_by")))
    };
    let (ava, how) = person("ava.chen@acme.com", "hubspot");
    assert_eq!(how, "work_email");
    assert_eq!(
        person("ava.chen@acme.com", "marketing").0,
        ava,
        "same address, other case"
    );
    let (p, how) = person("avachen@gmail.com", "marketing");
    assert_eq!(
        (p, how.as_str()),
        (ava.clone(), "name_and_domain"),
        "personal address"
    );
    assert_ne!(
        person("ava.chen2@globex.io", "marketing").0,
        ava,
        "namesake with another work address"
    );
    let ben = person("ben.baker@globex.io", "hubspot").0;
    assert_ne!(
        person("ben.baker2@globex.io", "marketing").0,
        ben,
        "namesake at the same company"
    );
    let (p, how) = person("benbaker@hotmail.com", "marketing");
    assert_eq!(how, "ambiguous_name");
    assert!(p != ben && p != person("ben.baker2@globex.io", "marketing").0);
    assert_ne!(
        person("ava@yahoo.com", "marketing").0,
        ava,
        "namesake at another company"
    );
    assert_ne!(ben, ava);

    let people = rows(&demo, "select * from dim_people").await;
    assert_eq!(
        people.len(),
        6,
        "Ava, her namesake, the yahoo Ava, two Bens, the hotmail Ben: {people:?}"
    );
    let golden = people
        .iter()
        .find(|r| s(r.get("person_id")) == ava)
        .unwrap();
    assert_eq!(s(golden.get("source_records")), "3");
    // Survivorship: the CRM's email wins; the form fill's country wins.
    assert_eq!(s(golden.get("email")), "ava.chen@acme.com");
    assert_eq!(
        s(golden.get("country_code")),
        "DE",
        "marketing owns country"
    );
    assert_eq!(s(golden.get("account_id")), "acme.com");

    let accounts = rows(&demo, "select account_id, crm_records, country_code, industry from dim_accounts order by account_id").await;
    let acme = accounts
        .iter()
        .find(|r| s(r.get("account_id")) == "acme.com")
        .unwrap();
    assert_eq!(s(acme.get("crm_records")), "3", "{accounts:?}");
    assert_eq!(
        s(acme.get("industry")),
        "Software",
        "the earliest record with a value"
    );
    assert_eq!(
        accounts.len(),
        3,
        "acme.com, the German Acme, globex.io: {accounts:?}"
    );
    demo.stop();
}

/// Attribution weights against hand-computed answers: one touch, two
/// touches, five touches with others outside the lookback and after the
/// close; a lost deal earns nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribution_weights_match_hand_computed_cases() {
    let mut data = Dataset::default();
    data.companies.push(company(
        "Acme",
        Some("acme.com"),
        Some("Software"),
        Some("US"),
    ));
    for name in ["one", "two", "many", "lost"] {
        data.contacts
            .push(contact(&format!("{name}@acme.com"), "A", "B", 0));
    }
    data.campaigns.push(campaign("google", "cpc")); // Paid Search
    data.campaigns.push(campaign("newsletter", "email")); // Email
    data.campaigns.push(campaign("zoom", "webinar")); // Webinar
    let close = now().timestamp() - 30 * DAY;
    let deal = |contact: u32, stage: &'static str, created: i64| Deal {
        company: 0,
        contacts: vec![contact],
        name: format!("deal {contact}"),
        amount: 10_000,
        stage,
        created_at: created,
        close_at: close,
    };
    data.deals.push(deal(0, "closedwon", close - 40 * DAY));
    data.deals.push(deal(1, "closedwon", close - 10 * DAY));
    data.deals.push(deal(2, "closedwon", close - 50 * DAY));
    data.deals.push(deal(3, "closedlost", close - 50 * DAY));
    // one: a single touch.
    data.touches.push(touch(0, 0, close - 10 * DAY));
    // two: 20 and 5 days before the close; the deal was created 10 days
    // before it, so the first touch is also the opportunity-creation touch.
    data.touches.push(touch(1, 0, close - 20 * DAY));
    data.touches.push(touch(1, 1, close - 5 * DAY));
    // many: one outside the 90-day lookback, five inside, one after close.
    for (campaign, days) in [
        (0u16, -100i64),
        (0, -80),
        (1, -60),
        (2, -40),
        (1, -20),
        (2, -1),
        (0, 3),
    ] {
        data.touches.push(touch(2, campaign, close + days * DAY));
    }
    data.touches.push(touch(3, 2, close - 5 * DAY));
    data.touches.sort_by_key(|t| t.arrived_at);
    let (_tmp, demo) = build(data).await;

    let credits = rows(
        &demo,
        "select p.email, a.model, a.touch_position, a.touches_in_path, a.channel, a.credit, a.revenue, a.occurred_at \
         from attribution_credits a join dim_people p on p.person_id = a.person_id \
         order by p.email, a.model, a.touch_position",
    )
    .await;
    let got = |email: &str, model: &str| -> Vec<(u64, f64)> {
        credits
            .iter()
            .filter(|r| s(r.get("email")) == email && s(r.get("model")) == model)
            .map(|r| {
                let rev = r["revenue"].as_f64().unwrap();
                let credit = r["credit"].as_f64().unwrap();
                assert!((rev - credit * 10_000.0).abs() < 1e-6);
                (r["touch_position"].as_u64().unwrap(), credit)
            })
            .collect()
    };
    let check = |email: &str, model: &str, want: &[(u64, f64)]| {
        let g = got(email, model);
        assert_eq!(g.len(), want.len(), "{email} {model}: {g:?} vs {want:?}");
        for ((gp, gc), (wp, wc)) in g.iter().zip(want) {
            assert_eq!(gp, wp, "{email} {model}: {g:?}");
            assert!(
                (gc - wc).abs() < 1e-9,
                "{email} {model} position {wp}: {gc} != {wc}"
            );
        }
    };
    let models = [
        "first_touch",
        "last_touch",
        "linear",
        "time_decay",
        "u_shaped",
        "w_shaped",
    ];
    for m in models {
        check("one@acme.com", m, &[(1, 1.0)]);
    }
    let decay = |days: f64| 0.5f64.powf(days / 7.0);
    let (d20, d5) = (decay(20.0), decay(5.0));
    check("two@acme.com", "first_touch", &[(1, 1.0)]);
    check("two@acme.com", "last_touch", &[(2, 1.0)]);
    check("two@acme.com", "linear", &[(1, 0.5), (2, 0.5)]);
    check(
        "two@acme.com",
        "time_decay",
        &[(1, d20 / (d20 + d5)), (2, d5 / (d20 + d5))],
    );
    check("two@acme.com", "u_shaped", &[(1, 0.5), (2, 0.5)]);
    // First and opportunity creation coincide: 30% + 30%, last 30%, and the
    // 10% for "the rest" spread over the three slots.
    check(
        "two@acme.com",
        "w_shaped",
        &[(1, 0.6 + 0.2 / 3.0), (2, 0.3 + 0.1 / 3.0)],
    );

    let ds = [80.0, 60.0, 40.0, 20.0, 1.0].map(decay);
    let total: f64 = ds.iter().sum();
    check("many@acme.com", "first_touch", &[(1, 1.0)]);
    check("many@acme.com", "last_touch", &[(5, 1.0)]);
    check(
        "many@acme.com",
        "linear",
        &[(1, 0.2), (2, 0.2), (3, 0.2), (4, 0.2), (5, 0.2)],
    );
    check(
        "many@acme.com",
        "time_decay",
        &ds.iter()
            .enumerate()
            .map(|(i, d)| (i as u64 + 1, d / total))
            .collect::<Vec<_>>(),
    );
    let mid = 0.2 / 3.0;
    check(
        "many@acme.com",
        "u_shaped",
        &[(1, 0.4), (2, mid), (3, mid), (4, mid), (5, 0.4)],
    );
    // The deal was created 50 days before the close: the touch 60 days
    // before it (position 2) created the opportunity.
    check(
        "many@acme.com",
        "w_shaped",
        &[(1, 0.3), (2, 0.3), (3, 0.05), (4, 0.05), (5, 0.3)],
    );
    assert!(
        got("lost@acme.com", "linear").is_empty(),
        "a lost deal earns no credit"
    );

    // Per channel: the "many" path's first touch is Paid Search (-80), its
    // last Webinar (-1); "two" goes Paid Search → Email; "one" Paid Search.
    let by_channel = rows(&demo, "select * from attribution_by_channel").await;
    let ch = |c: &str, col: &str| {
        by_channel
            .iter()
            .find(|r| s(r.get("channel")) == c)
            .and_then(|r| r[col].as_f64())
            .unwrap_or(0.0)
    };
    assert!((ch("Paid Search", "first_touch") - 30_000.0).abs() < 0.01);
    assert!((ch("Webinar", "last_touch") - 10_000.0).abs() < 0.01);
    assert!((ch("Email", "last_touch") - 10_000.0).abs() < 0.01);
    assert!((ch("Paid Search", "last_touch") - 10_000.0).abs() < 0.01);
    let by_campaign = rows(
        &demo,
        "select * from attribution_by_campaign where campaign_name = 'google / cpc'",
    )
    .await;
    assert_eq!(by_campaign.len(), 1, "{by_campaign:?}");
    assert!((by_campaign[0]["first_touch"].as_f64().unwrap() - 30_000.0).abs() < 0.01);
    let linear: f64 = ["Paid Search", "Email", "Webinar"]
        .iter()
        .map(|c| ch(c, "linear"))
        .sum();
    assert!(
        (linear - 30_000.0).abs() < 0.05,
        "linear credits all revenue: {linear}"
    );
    demo.stop();
}

/// Scoring against a hand-computed case: fit from the ICP rules, engagement
/// decaying by half every 30 days, the MQL moment at the touch that crossed
/// 60, owner routed by territory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_matches_hand_computed_case() {
    let mut data = Dataset::default();
    // Software (15) + 50-199 employees (10); the person: US (5), Marketing Leader (15).
    data.companies
        .push(company("Acme", Some("acme.com"), Some("SaaS"), Some("US")));
    let mut c = contact("ava@acme.com", "Ava", "Chen", 0);
    c.title = "VP Marketing";
    c.country = "USA";
    data.contacts.push(c);
    data.contacts
        .push(contact("cold@acme.com", "Cold", "Lead", 0));
    data.campaigns.push(campaign("google", "cpc"));
    let day = |d: i64| now().timestamp() - d * DAY;
    // content_download (5) 60 days ago, webinar (10) 30 days ago, demo
    // request (20) 10 days ago.
    for (kind, days) in [(2u8, 60), (4, 30), (6, 10)] {
        let mut t = touch(0, 0, day(days));
        t.kind = kind;
        data.touches.push(t);
    }
    let mut t = touch(1, 0, day(5));
    t.kind = 0; // one page view (1)
    data.touches.push(t);
    data.touches.sort_by_key(|t| t.arrived_at);
    let (_tmp, demo) = build(data).await;

    let scores = rows(&demo, "select * from contact_scores order by email").await;
    let ava = scores
        .iter()
        .find(|r| s(r.get("email")) == "ava@acme.com")
        .unwrap();
    assert_eq!(s(ava.get("persona")), "Marketing Leader");
    assert_eq!(s(ava.get("fit_score")), "45");
    // Now: 5 * 0.5^2 + 10 * 0.5 + 20 * 0.5^(1/3) = 22.12
    let engagement = 5.0 * 0.25 + 10.0 * 0.5 + 20.0 * 0.5f64.powf(1.0 / 3.0);
    assert!(
        (ava["engagement_score"].as_f64().unwrap() - (engagement * 10.0).round() / 10.0).abs()
            < 1e-9
    );
    assert_eq!(
        s(ava.get("lead_score")),
        (45.0 + engagement).round().to_string()
    );
    // At the webinar: 45 + 5 * 0.5 + 10 = 57.5 (not yet); at the demo
    // request: 45 + 12.5 * 0.5^(20/30) + 20 = 72.9: the MQL moment.
    assert_eq!(ava["is_mql"], Value::Bool(true));
    let want = chrono::DateTime::from_timestamp(day(10), 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(s(ava.get("mql_date")), want);
    assert_eq!(s(ava.get("owner_id")), "71002", "US, SMB: NA Commercial");
    assert_eq!(s(ava.get("first_touch_channel")), "Paid Search");
    let cold = scores
        .iter()
        .find(|r| s(r.get("email")) == "cold@acme.com")
        .unwrap();
    assert_eq!(cold["is_mql"], Value::Bool(false));
    assert_eq!(s(cold.get("persona")), "Other");
    demo.stop();
}

/// `ferry build` again over the demo's lake and emulators (same as_of).
async fn rebuild(demo: &Demo, skip_sync: bool) {
    ferry::run::build::build(
        &demo.project,
        demo.lake.clone(),
        &ferry::run::Selection {
            vars: vec![format!("as_of={}", now().format("%Y-%m-%dT%H:%M:%SZ"))],
            ..Default::default()
        },
        &ferry::run::BuildOptions {
            threads: 2,
            skip_sync,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .into_result()
    .unwrap();
}

fn num(v: &str) -> f64 {
    v.parse().unwrap_or(f64::NAN)
}

/// The demo end to end on generated data: after `ferry build`, HubSpot's
/// contacts carry exactly what the scoring mart says; reps' owners were
/// kept; nobody was created twice; planted duplicates were resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_leaves_the_crm_matching_the_scoring_mart() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = Lake::from_url(
        tmp.path().join("lake").to_str().unwrap(),
        tmp.path(),
        &Default::default(),
    )
    .unwrap();
    let project = Project::load(root()).unwrap();
    let demo = demo::run(
        project,
        lake,
        &DemoOptions {
            scale: 400,
            threads: 2,
            ..DemoOptions::default()
        },
    )
    .await
    .unwrap();
    let stages: Vec<(&str, &str)> = demo
        .report
        .stages
        .iter()
        .map(|s| (s.name, s.status))
        .collect();
    assert_eq!(
        stages,
        vec![
            ("check", "ok"),
            ("extract", "ok"),
            ("seed", "ok"),
            ("run", "ok"),
            ("test", "ok"),
            ("sync", "ok")
        ]
    );
    let scores = rows(&demo, "select * from contact_scores").await;
    let crm = demo.served.hubspot.records("contacts");
    let mut by_email: BTreeMap<String, &ferry::sim::hubspot::store::Record> = BTreeMap::new();
    for r in &crm {
        let email = r
            .properties
            .get("email")
            .cloned()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            by_email.insert(email.clone(), r).is_none(),
            "{email} is in the CRM twice"
        );
    }
    let original: BTreeMap<String, &Contact> = demo
        .data
        .contacts
        .iter()
        .map(|c| (c.email.clone(), c))
        .collect();
    assert!(
        scores.len() > demo.data.contacts.len(),
        "people only known from form fills are in the mart"
    );
    let new_people = scores
        .iter()
        .filter(|r| !original.contains_key(&s(r.get("email"))))
        .count();
    assert!(new_people > 0);
    assert_eq!(
        by_email.len(),
        original.len() + new_people,
        "CRM: the original contacts plus one per new person"
    );
    let mut kept_owner = 0;
    for row in &scores {
        let email = s(row.get("email"));
        let r = by_email
            .get(&email)
            .unwrap_or_else(|| panic!("{email} is not in the CRM"));
        let p = |k: &str| r.properties.get(k).cloned().unwrap_or_default();
        assert_eq!(
            num(&p("ferry_lead_score")),
            num(&s(row.get("lead_score"))),
            "{email} lead score"
        );
        assert_eq!(
            num(&p("ferry_fit_score")),
            num(&s(row.get("fit_score"))),
            "{email} fit score"
        );
        assert_eq!(p("ferry_persona"), s(row.get("persona")), "{email} persona");
        assert_eq!(
            p("ferry_seniority"),
            s(row.get("seniority")),
            "{email} seniority"
        );
        assert_eq!(
            p("ferry_first_touch_channel"),
            s(row.get("first_touch_channel")),
            "{email}"
        );
        assert_eq!(
            p("ferry_last_touch_channel"),
            s(row.get("last_touch_channel")),
            "{email}"
        );
        let mql = s(row.get("mql_date"));
        assert_eq!(
            p("ferry_mql_date").get(..10).unwrap_or(""),
            mql,
            "{email} mql date"
        );
        // if_empty: a rep's owner stays; otherwise the routed owner.
        assert_eq!(
            p("hubspot_owner_id"),
            s(row.get("owner_id")),
            "{email} owner"
        );
        if let Some(o) = original.get(&email).and_then(|c| c.owner) {
            assert_eq!(
                p("hubspot_owner_id"),
                o,
                "{email}: the rep's owner was overwritten"
            );
            kept_owner += 1;
        }
    }
    assert!(kept_owner > 50, "reps owned some contacts: {kept_owner}");

    // A second build (incremental extraction, same as_of) sends nothing.
    let calls_before = demo.served.hubspot.stats().0;
    rebuild(&demo, false).await;
    let last = rows(
        &demo,
        "select created, updated, unchanged, failed from ferry.sync_runs where sync = 'contact_scores' order by started_at desc limit 1",
    )
    .await;
    assert_eq!(
        (
            s(last[0].get("created")),
            s(last[0].get("updated")),
            s(last[0].get("failed"))
        ),
        ("0".into(), "0".into(), "0".into()),
        "{last:?}"
    );
    assert_eq!(s(last[0].get("unchanged")), scores.len().to_string());
    assert_eq!(
        demo.served.hubspot.records("contacts").len(),
        crm.len(),
        "nobody created twice"
    );
    assert!(
        demo.served.hubspot.stats().0 > calls_before,
        "the second build extracted again"
    );

    // A rep takes a contact off a deal: after the next build the deal's
    // contacts are the current ones, not every one it ever had.
    let (deal, gone) = demo
        .served
        .hubspot
        .with_crm(|crm| {
            let (deal, contacts) = crm
                .associations
                .iter()
                .filter(|((kind, _), to)| {
                    kind == "deals" && to.iter().filter(|(k, _)| k == "contacts").count() >= 2
                })
                .map(|((_, id), to)| (*id, to.clone()))
                .next()
                .expect("a deal with two contacts");
            let gone = contacts
                .iter()
                .find(|(k, _)| k == "contacts")
                .map(|(_, id)| *id)
                .unwrap();
            for (from, to) in [
                (("deals".to_string(), deal), ("contacts".to_string(), gone)),
                (("contacts".to_string(), gone), ("deals".to_string(), deal)),
            ] {
                if let Some(set) = crm.associations.get_mut(&from) {
                    set.remove(&to);
                }
            }
            crm.touch("deals", deal, chrono::Utc::now());
            (deal, gone)
        })
        .unwrap();
    // The extractor reads changes older than its search lag margin (the
    // demo's: twice the emulator's 1 s lag).
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let before = rows(
        &demo,
        &format!("select contact_id from stg_hubspot__deal_contacts where deal_id = '{deal}'"),
    )
    .await;
    assert!(
        before
            .iter()
            .any(|r| s(r.get("contact_id")) == gone.to_string())
    );
    rebuild(&demo, true).await;
    let after = rows(
        &demo,
        &format!("select contact_id from stg_hubspot__deal_contacts where deal_id = '{deal}'"),
    )
    .await;
    assert_eq!(after.len(), before.len() - 1, "{before:?} -> {after:?}");
    assert!(
        !after
            .iter()
            .any(|r| s(r.get("contact_id")) == gone.to_string())
    );
    // Every score in range, MQLs exist and are not everybody.
    let mqls = scores
        .iter()
        .filter(|r| r["is_mql"] == Value::Bool(true))
        .count();
    assert!(
        mqls > 0 && mqls < scores.len(),
        "{mqls} MQLs of {}",
        scores.len()
    );

    // Planted duplicates: a form fill under the contact's own address (other
    // case or padding) is that contact's person.
    let ids = rows(&demo, "select r.source, r.source_id, r.email, i.person_id from int_person_records r join int_identity i on i.record_id = r.record_id").await;
    let person_of_email: BTreeMap<String, String> = ids
        .iter()
        .filter(|r| s(r.get("source")) == "hubspot")
        .map(|r| (s(r.get("email")), s(r.get("person_id"))))
        .collect();
    let mut planted = 0;
    for (i, l) in demo.data.leads.iter().enumerate() {
        let Some(c) = l.same_as else { continue };
        let contact_email = &demo.data.contacts[c as usize].email;
        if l.email.trim().to_lowercase() != *contact_email {
            continue;
        }
        planted += 1;
        let lead_person = ids
            .iter()
            .find(|r| {
                s(r.get("source")) == "marketing" && s(r.get("source_id")) == (i + 1).to_string()
            })
            .map(|r| s(r.get("person_id")));
        assert_eq!(
            lead_person.as_ref(),
            person_of_email.get(contact_email),
            "lead {} is {contact_email}",
            l.email
        );
    }
    assert!(planted > 20, "{planted}");
    // CRM duplicates (the same person again under a personal address, same
    // name and company) resolve to the original's person, unless the
    // company has no domain or the name is ambiguous there.
    let person_of_contact = |c: &Contact| person_of_email.get(&c.email).cloned();
    let (mut dupes, mut merged) = (0, 0);
    for c in demo
        .data
        .contacts
        .iter()
        .filter(|c| c.duplicate_of.is_some())
    {
        let orig = &demo.data.contacts[c.duplicate_of.unwrap() as usize];
        if demo.data.companies[orig.company as usize].domain.is_none() {
            continue;
        }
        dupes += 1;
        if person_of_contact(c).is_some() && person_of_contact(c) == person_of_contact(orig) {
            merged += 1;
        }
    }
    assert!(
        dupes > 3 && merged * 10 >= dupes * 8,
        "{merged} of {dupes} CRM duplicates merged"
    );

    // A rep deletes a synced contact in HubSpot: the next build lands it as
    // archived, the scoring mart leaves that person out, and the sync lets
    // the record go instead of recreating it.
    let victim = scores
        .iter()
        .find(|r| r.get("crm_contact_id").is_some_and(|v| !v.is_null()))
        .map(|r| (s(r.get("email")), s(r.get("crm_contact_id"))))
        .expect("a scored person with a HubSpot contact");
    let reply = reqwest::Client::new()
        .post(format!(
            "{}/crm/v3/objects/contacts/batch/archive",
            demo.served.hubspot.base_url()
        ))
        .bearer_auth(ferry::sim::hubspot::SimConfig::default().token)
        .json(&serde_json::json!({"inputs": [{"id": victim.1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 204);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    rebuild(&demo, false).await;
    let still = rows(
        &demo,
        &format!(
            "select email from contact_scores where email = '{}'",
            victim.0
        ),
    )
    .await;
    assert!(
        still.is_empty(),
        "a deleted contact is still scored: {still:?}"
    );
    assert!(
        !demo
            .served
            .hubspot
            .records("contacts")
            .iter()
            .any(|r| r.properties.get("email") == Some(&victim.0)),
        "the sync recreated a contact deleted in HubSpot"
    );
    let forgot = rows(
        &demo,
        &format!(
            "select operation from ferry.sync_log where key = '{}' order by at desc limit 1",
            victim.0
        ),
    )
    .await;
    assert_eq!(s(forgot[0].get("operation")), "forget", "{forgot:?}");
    // The CRM's company duplicates collapse into fewer accounts.
    let accounts = rows(&demo, "select count(*) as n from dim_accounts").await;
    let n = accounts[0]["n"].as_u64().unwrap() as usize;
    // A duplicate merges when its original has a country (name + country
    // match), or, for one that carries the domain, when the original has
    // its domain too.
    let cos = &demo.data.companies;
    let merged = cos
        .iter()
        .filter_map(|c| c.duplicate_of.map(|o| (c, &cos[o as usize])))
        .filter(|(dupe, orig)| {
            orig.country.is_some() || (dupe.domain.is_some() && orig.domain.is_some())
        })
        .count();
    assert!(merged > 0);
    assert_eq!(
        n,
        cos.len() - merged,
        "{n} accounts from {} companies",
        cos.len()
    );
    demo.stop();
}

/// `ferry demo` and `ferry generate` through the real binary.
#[test]
fn demo_and_generate_commands() {
    let tmp = tempfile::tempdir().unwrap();
    // A copy of the starter project, so the repository's own lake is untouched.
    let dir = tmp.path().join("starter");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root().join("ferry.toml"), dir.join("ferry.toml")).unwrap();
    for d in ["models", "sql"] {
        crate::copy_dir(&root().join(d), &dir.join(d));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "--project-dir",
            dir.to_str().unwrap(),
            "demo",
            "--scale",
            "300",
            "--threads",
            "2",
        ])
        .env_remove("FERRY_LAKE")
        .env_remove("HUBSPOT_TOKEN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for want in [
        "rows per model stage",
        "lead score distribution",
        "closed-won revenue by channel under each attribution model",
        "sync to HubSpot",
        "demo finished in",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // The lake stays for ferry query.
    let q = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "--project-dir",
            dir.to_str().unwrap(),
            "query",
            "select count(*) as n from contact_scores",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    let n: usize = String::from_utf8_lossy(&q.stdout)
        .lines()
        .nth(1)
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(n > 300, "{}", String::from_utf8_lossy(&q.stdout));
    // A lake the demo did not write is left alone.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("raw")).unwrap();
    std::fs::write(other.join("raw/keep.txt"), "mine").unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "--project-dir",
            dir.to_str().unwrap(),
            "demo",
            "--scale",
            "50",
        ])
        .env("FERRY_LAKE", &other)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("did not write"));
    assert!(other.join("raw/keep.txt").exists());

    // generate --out: deterministic JSON lines.
    let gen_dir = |name: &str| {
        let d = tmp.path().join(name);
        let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["generate", "--scale", "100", "--out", d.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        d
    };
    let (a, b) = (gen_dir("a"), gen_dir("b"));
    for stream in [
        "companies",
        "contacts",
        "deals",
        "campaigns",
        "touches",
        "leads",
        "email_events",
    ] {
        let x = std::fs::read(a.join(format!("{stream}.jsonl"))).unwrap();
        assert!(!x.is_empty(), "{stream}");
        assert_eq!(
            x,
            std::fs::read(b.join(format!("{stream}.jsonl"))).unwrap(),
            "{stream} is deterministic"
        );
    }
}

/// `ferry generate --serve` feeds `ferry build` on the starter project as
/// the README says: the shipped ferry.toml (its ports changed) and the
/// tokens the command prints.
#[test]
fn generate_serve_feeds_a_build() {
    use std::io::BufRead;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string()
    };
    let (hubspot, marketing) = (free(), free());
    let mut server = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["generate", "--scale", "150", "--serve"])
        .args(["--hubspot-port", &hubspot, "--marketing-port", &marketing])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Hold the pipe open while the server runs: it prints more lines.
    let mut said = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut first = String::new();
    said.read_line(&mut first).unwrap();
    assert!(first.contains("HubSpot emulator at"), "{first}");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("starter");
    for d in ["models", "sql"] {
        crate::copy_dir(&root().join(d), &dir.join(d));
    }
    let toml = std::fs::read_to_string(root().join("ferry.toml"))
        .unwrap()
        .replace("127.0.0.1:8090", &format!("127.0.0.1:{hubspot}"))
        .replace("127.0.0.1:8091", &format!("127.0.0.1:{marketing}"));
    std::fs::write(dir.join("ferry.toml"), toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--project-dir", dir.to_str().unwrap(), "build"])
        .env_remove("FERRY_LAKE")
        .env("HUBSPOT_TOKEN", "ferry-sim-token")
        .env("MARKETING_API_TOKEN", "ferry-demo-marketing")
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    drop(said);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("contact_scores: created"), "{text}");
}

/// `ferry demo --crm salesforce` end to end: the same people and scores as
/// on HubSpot; every contact and lead carries its scores in the Ferry_*__c
/// fields; people known only from form fills became leads, and nobody who
/// is a contact got a lead; the "Ferry MQLs" campaign holds exactly the
/// MQLs; a second build sends nothing; a lead deleted in Salesforce is not
/// recreated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_salesforce_leaves_the_org_matching_the_scoring_mart() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = Lake::from_url(
        tmp.path().join("lake").to_str().unwrap(),
        tmp.path(),
        &Default::default(),
    )
    .unwrap();
    let project = Project::load(root()).unwrap();
    let demo = demo::run(
        project,
        lake,
        &DemoOptions {
            scale: 400,
            threads: 2,
            crm: demo::Crm::Salesforce,
            ..DemoOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        demo.report.stages.iter().all(|s| s.status == "ok"),
        "{:?}",
        demo.report
            .stages
            .iter()
            .map(|s| (s.name, s.status))
            .collect::<Vec<_>>()
    );
    let sf = demo.salesforce.as_ref().expect("the Salesforce emulator");
    let scores = rows(&demo, "select * from contact_scores").await;
    let email_of = |r: &ferry::sim::salesforce::Record| {
        r.values
            .get("Email")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_lowercase()
    };
    let mut people: BTreeMap<String, (&str, ferry::sim::salesforce::Record)> = BTreeMap::new();
    let (contacts, leads) = (sf.records("Contact"), sf.records("Lead"));
    for (object, records) in [("Contact", &contacts), ("Lead", &leads)] {
        for r in records.iter() {
            let email = email_of(r);
            if let Some((other, _)) = people.get(&email) {
                // A duplicate person the generator planted may be a lead
                // beside a contact; ferry must not add any.
                assert!(
                    demo.data.contacts.iter().any(|c| c.email == email),
                    "{email} is a {other} and a {object}, and ferry created one of them"
                );
            }
            people.insert(email, (object, r.clone()));
        }
    }
    let originals: std::collections::BTreeSet<&str> = demo
        .data
        .contacts
        .iter()
        .map(|c| c.email.as_str())
        .collect();
    let created = leads
        .iter()
        .filter(|r| !originals.contains(email_of(r).as_str()))
        .count();
    let new_people = scores
        .iter()
        .filter(|r| !originals.contains(s(r.get("email")).as_str()))
        .count();
    assert!(new_people > 0);
    assert_eq!(
        created, new_people,
        "one lead per person known only from form fills"
    );
    for row in &scores {
        let email = s(row.get("email"));
        let (object, r) = people
            .get(&email)
            .unwrap_or_else(|| panic!("{email} is not in Salesforce"));
        let v = |k: &str| r.values.get(k).cloned().unwrap_or(Value::Null);
        assert_eq!(
            v("Ferry_Lead_Score__c").as_f64(),
            Some(num(&s(row.get("lead_score")))),
            "{email} ({object}) lead score"
        );
        assert_eq!(
            s(Some(&v("Ferry_Persona__c"))),
            s(row.get("persona")),
            "{email} persona"
        );
        assert_eq!(
            s(Some(&v("Ferry_MQL_Date__c"))),
            s(row.get("mql_date")),
            "{email} mql date"
        );
    }
    // The campaign: one, with every MQL once, as a contact or a lead.
    let campaigns = sf.records("Campaign");
    assert_eq!(campaigns.len(), 1, "one campaign");
    let members = sf.records("CampaignMember");
    let mqls = scores
        .iter()
        .filter(|r| s(r.get("is_mql")) == "true")
        .count();
    assert_eq!(members.len(), mqls, "every MQL a member once");

    // A second build sends nothing.
    rebuild(&demo, false).await;
    let last = rows(
        &demo,
        "select sync, created + updated + archived + failed as sent from ferry.sync_runs \
         where started_at = (select max(started_at) from ferry.sync_runs s where s.sync = ferry.sync_runs.sync)",
    )
    .await;
    assert_eq!(last.len(), 4, "{last:?}");
    assert!(last.iter().all(|r| s(r.get("sent")) == "0"), "{last:?}");

    // A lead deleted in Salesforce is not recreated by the next build.
    let gone = leads
        .iter()
        .find(|r| originals.contains(email_of(r).as_str()))
        .unwrap()
        .clone();
    sf.with_org(|org| org.delete(std::slice::from_ref(&gone.id)))
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    rebuild(&demo, false).await;
    assert!(
        !sf.records("Lead")
            .iter()
            .any(|r| email_of(r) == email_of(&gone)),
        "the deleted lead came back"
    );
}
