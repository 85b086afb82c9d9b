//! `ferry generate`: a deterministic synthetic GTM dataset with the mess of
//! real vendor data. The same scale and seed always give the same records.
//!
//! `scale` is the number of CRM contacts; the rest follows it: one company
//! per five contacts, about ten marketing touches per contact, form-fill
//! leads for half as many people (most of them contacts again, under another
//! address), sequencer email events, and deals for about one company in six.
//!
//! The mess, on purpose: job titles and countries spelled many ways, US
//! states as codes and names, industries in vendors' own words, company
//! domains with schemes, `www.` and paths (or missing), free-mail addresses,
//! the same person as a CRM contact and as a form-fill lead (same address in
//! another case, or a personal address with the same name and company),
//! the same person twice in the CRM (again under a personal address),
//! the same company twice, UTM tags in several spellings, and touches and
//! email events that arrive days after they happened.

use chrono::{DateTime, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Where generated time ends: data covers the year before it.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

const DAY: i64 = 86_400;

const FIRST: &[&str] = &[
    "Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kara",
    "Liam", "Maya", "Noah", "Olivia", "Priya", "Quinn", "Rafael", "Sofia", "Tariq", "Uma",
    "Victor", "Wen", "Ximena", "Yusuf", "Zoe", "Aaron", "Bianca", "Carlos", "Dana", "Emil",
    "Fatima", "Gabriel", "Hana", "Ivan", "Julia", "Kenji", "Lena", "Marco", "Nadia", "Omar",
    "Paula", "Ravi", "Sara", "Tom", "Ursula", "Vera", "Will", "Yara", "Zane",
];
const LAST: &[&str] = &[
    "Adams", "Baker", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jensen",
    "Khan", "Lopez", "Muller", "Nakamura", "Okafor", "Patel", "Quinn", "Rossi", "Schmidt",
    "Tanaka", "Usman", "Varga", "Weber", "Xu", "Yilmaz", "Zhang", "Andersen", "Brown", "Costa",
    "Dubois", "Eriksson", "Ferreira", "Gomez", "Huber", "Iqbal", "Jones", "Kowalski", "Larsen",
    "Moreau", "Novak", "Olsen", "Park", "Reyes", "Silva", "Torres", "Walker", "Young", "Ziegler",
];
const WORDS: &[&str] = &[
    "Acme",
    "Northwind",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Hooli",
    "Vandelay",
    "Massive",
    "Aperture",
    "Black Mesa",
    "Blue Sun",
    "Gringotts",
    "Monarch",
    "Oscorp",
    "Pied Piper",
    "Prestige",
    "Rekall",
    "Sirius",
    "Virtucon",
    "Wonka",
    "Zorg",
    "Nakatomi",
    "Dunder",
    "Bluth",
    "Kramerica",
    "Veridian",
    "Ollivander",
    "Lacuna",
    "Gekko",
    "Nimbus",
    "Quantum",
    "Helix",
    "Orbit",
    "Summit",
    "Beacon",
];
const SUFFIXES: &[&str] = &[
    "Analytics",
    "Labs",
    "Systems",
    "Health",
    "Logistics",
    "Bank",
    "Retail",
    "Software",
    "Robotics",
    "Media",
    "Energy",
    "Foods",
    "Capital",
    "Cloud",
    "Security",
    "Learning",
];
const TLDS: &[&str] = &["com", "io", "co", "com", "ai", "net"];

/// (title variants, weight): each group is one persona and seniority.
const TITLES: &[&[&str]] = &[
    &[
        "VP of Marketing",
        "VP Marketing",
        "Vice President, Marketing",
        "vp, marketing",
        "Vice President of Marketing",
    ],
    &["Chief Marketing Officer", "CMO", "C.M.O."],
    &[
        "Head of Marketing",
        "Head of Demand Generation",
        "Director of Marketing",
        "Marketing Director",
        "Dir. Demand Gen",
    ],
    &[
        "Marketing Manager",
        "Demand Generation Manager",
        "Growth Marketing Manager",
        "Sr. Marketing Manager",
    ],
    &[
        "Marketing Coordinator",
        "Marketing Specialist",
        "Content Marketer",
    ],
    &[
        "VP of Sales",
        "VP Sales",
        "Vice President, Sales",
        "Vice President of Sales",
    ],
    &["Chief Revenue Officer", "CRO"],
    &["Sales Director", "Director of Sales", "Head of Sales"],
    &[
        "Account Executive",
        "Senior Account Executive",
        "AE",
        "Sr. AE",
    ],
    &[
        "Sales Development Representative",
        "SDR",
        "BDR",
        "Business Development Representative",
    ],
    &[
        "Revenue Operations Manager",
        "RevOps Manager",
        "Sales Operations Manager",
        "Marketing Operations Manager",
    ],
    &[
        "Director, Revenue Operations",
        "Head of RevOps",
        "Director of Sales Operations",
    ],
    &[
        "CTO",
        "Chief Technology Officer",
        "VP Engineering",
        "VP of Engineering",
    ],
    &[
        "Software Engineer",
        "Senior Software Engineer",
        "Data Engineer",
        "Analytics Engineer",
    ],
    &[
        "CEO",
        "Founder",
        "Co-Founder & CEO",
        "Chief Executive Officer",
        "Founder/CEO",
    ],
    &["Intern", "Student", "Consultant"],
];

/// (variants, ISO code): countries as people and vendors type them.
const COUNTRIES: &[(&[&str], &str)] = &[
    (
        &[
            "United States",
            "US",
            "USA",
            "U.S.A.",
            "United States of America",
            "us",
            "U.S.",
        ],
        "US",
    ),
    (
        &[
            "United Kingdom",
            "UK",
            "GB",
            "Great Britain",
            "England",
            "U.K.",
        ],
        "GB",
    ),
    (&["Germany", "DE", "Deutschland", "germany"], "DE"),
    (&["France", "FR", "france"], "FR"),
    (&["Canada", "CA", "canada"], "CA"),
    (&["Australia", "AU", "Aus"], "AU"),
    (&["Netherlands", "NL", "The Netherlands", "Holland"], "NL"),
    (&["India", "IN", "india"], "IN"),
    (&["Brazil", "BR", "Brasil"], "BR"),
    (&["Spain", "ES", "España"], "ES"),
];
const COUNTRY_WEIGHTS: &[u32] = &[45, 12, 9, 6, 7, 5, 4, 5, 4, 3];

const US_STATES: &[&[&str]] = &[
    &["CA", "California", "Calif.", "california"],
    &["NY", "New York", "N.Y."],
    &["TX", "Texas", "Tex."],
    &["WA", "Washington"],
    &["MA", "Massachusetts", "Mass."],
    &["IL", "Illinois"],
    &["FL", "Florida", "Fla."],
    &["CO", "Colorado"],
];

const INDUSTRIES: &[&[&str]] = &[
    &["Software", "Computer Software", "SaaS", "software"],
    &[
        "Information Technology & Services",
        "IT Services",
        "IT & Services",
    ],
    &["Financial Services", "Banking", "FinTech", "Fintech"],
    &["Hospital & Health Care", "Healthcare", "Health Care"],
    &["Retail", "E-commerce", "Ecommerce"],
    &["Manufacturing", "Industrial Automation"],
    &["Education", "Higher Education", "E-Learning"],
    &["Marketing & Advertising", "Advertising"],
];

const FREE_MAIL: &[&str] = &[
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
];

/// Marketing campaigns: (channel as the data team names it, utm_source
/// spellings, utm_medium spellings, name stem).
const CHANNELS: &[(&str, &[&str], &[&str], &str)] = &[
    (
        "paid_search",
        &["google", "Google", "adwords", "bing"],
        &["cpc", "CPC", "ppc", "paid_search"],
        "Search",
    ),
    (
        "paid_social",
        &["linkedin", "LinkedIn", "facebook", "fb"],
        &["paid_social", "paidsocial", "cpc"],
        "Social Ads",
    ),
    (
        "organic_search",
        &["google", "bing"],
        &["organic", "Organic"],
        "SEO",
    ),
    (
        "email",
        &["newsletter", "hubspot", "Newsletter"],
        &["email", "Email", "e-mail"],
        "Newsletter",
    ),
    (
        "webinar",
        &["zoom", "on24", "webinar"],
        &["webinar", "Webinar"],
        "Webinar",
    ),
    (
        "events",
        &["event", "conference", "tradeshow"],
        &["event", "offline"],
        "Field Event",
    ),
    (
        "review_sites",
        &["g2", "G2", "capterra"],
        &["referral", "review"],
        "Review Sites",
    ),
    (
        "partner",
        &["partner", "reseller"],
        &["referral", "partner"],
        "Partner",
    ),
    (
        "content_syndication",
        &["techtarget", "integrate"],
        &["syndication", "content"],
        "Syndication",
    ),
    (
        "direct",
        &["(direct)", "direct"],
        &["(none)", "none"],
        "Direct",
    ),
];

/// Touch kinds and how often they happen.
const TOUCH_KINDS: &[(&str, u32)] = &[
    ("page_view", 50),
    ("ad_click", 15),
    ("content_download", 10),
    ("form_fill", 8),
    ("webinar_attended", 7),
    ("event_visit", 4),
    ("demo_request", 2),
];

const SEQUENCES: &[&str] = &[
    "Outbound - VP Marketing",
    "Outbound - RevOps",
    "Inbound follow-up",
    "Webinar follow-up",
    "Closed-lost re-engage",
    "Event follow-up",
];
const OUTCOMES: &[(&str, u32)] = &[
    ("interested", 25),
    ("not_interested", 30),
    ("out_of_office", 20),
    ("referral", 10),
    ("unsubscribe", 15),
];

const OPEN_STAGES: &[&str] = &[
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "decisionmakerboughtin",
    "contractsent",
];

/// Sales reps (HubSpot owner ids) who already own some contacts.
pub const OWNERS: &[&str] = &["71001", "71002", "71003", "71004", "71005", "71006"];

#[derive(Debug, Clone)]
pub struct Company {
    pub name: String,
    /// As the CRM holds it: with scheme, `www.` or path, or missing.
    pub domain: Option<String>,
    /// The clean domain (ground truth, never served).
    pub true_domain: String,
    pub industry: Option<&'static str>,
    pub employees: Option<u32>,
    pub country: Option<&'static str>,
    pub created_at: i64,
    /// Another CRM record of the same company (index), if this is a duplicate.
    pub duplicate_of: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Contact {
    pub first: &'static str,
    pub last: &'static str,
    pub email: String,
    pub title: &'static str,
    pub country: &'static str,
    pub state: &'static str,
    pub company: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub owner: Option<&'static str>,
    pub lifecycle: &'static str,
    /// The contact this one duplicates (ground truth, never served).
    pub duplicate_of: Option<u32>,
}

/// A form-fill lead from the marketing platform.
#[derive(Debug, Clone)]
pub struct Lead {
    pub email: String,
    pub first: &'static str,
    pub last: &'static str,
    pub company: String,
    pub website: Option<String>,
    pub title: &'static str,
    pub country: &'static str,
    pub form: &'static str,
    pub submitted_at: i64,
    /// The contact this lead is (ground truth, never served).
    pub same_as: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Campaign {
    pub channel: usize,
    pub name: String,
    pub utm_source: &'static str,
    pub utm_medium: &'static str,
    pub started_at: i64,
    pub budget: u32,
}

/// Who a touch or email event belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Person {
    Contact(u32),
    Lead(u32),
}

#[derive(Debug, Clone, Copy)]
pub struct Touch {
    pub person: Person,
    pub campaign: u16,
    pub kind: u8,
    /// Index into the campaign's UTM spellings (source, medium).
    pub spelling: u8,
    pub occurred_at: i64,
    pub arrived_at: i64,
    /// The address in upper case (some trackers keep what was typed).
    pub shouted: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct EmailEvent {
    pub contact: u32,
    pub sequence: u8,
    pub step: u8,
    pub kind: &'static str,
    pub outcome: Option<&'static str>,
    pub occurred_at: i64,
    pub arrived_at: i64,
}

#[derive(Debug, Clone)]
pub struct Deal {
    pub company: u32,
    pub contacts: Vec<u32>,
    pub name: String,
    pub amount: u32,
    pub stage: &'static str,
    pub created_at: i64,
    pub close_at: i64,
}

/// The generated dataset.
#[derive(Debug, Default)]
pub struct Dataset {
    pub scale: usize,
    pub seed: u64,
    pub companies: Vec<Company>,
    pub contacts: Vec<Contact>,
    pub leads: Vec<Lead>,
    pub campaigns: Vec<Campaign>,
    /// In `arrived_at` order.
    pub touches: Vec<Touch>,
    /// In `arrived_at` order.
    pub email_events: Vec<EmailEvent>,
    pub deals: Vec<Deal>,
}

fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

/// Any variant of any group.
fn pick_in(rng: &mut StdRng, groups: &[&[&'static str]]) -> &'static str {
    let g = groups[rng.random_range(0..groups.len())];
    g[rng.random_range(0..g.len())]
}

fn weighted(rng: &mut StdRng, weights: impl Iterator<Item = u32> + Clone) -> usize {
    let total: u32 = weights.clone().sum();
    let mut x = rng.random_range(0..total.max(1));
    for (i, w) in weights.enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    0
}

fn slug(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn country_variant(rng: &mut StdRng, i: usize) -> &'static str {
    // Most records use the common spelling; the rest any variant.
    let variants = COUNTRIES[i].0;
    if rng.random_bool(0.5) {
        variants[0]
    } else {
        variants[rng.random_range(0..variants.len())]
    }
}

pub fn iso(secs: i64) -> String {
    Utc.timestamp_opt(secs, 0)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Dataset {
    /// Generate `scale` contacts and everything around them.
    pub fn generate(scale: usize, seed: u64) -> Dataset {
        let mut rng = StdRng::seed_from_u64(seed);
        let end = now().timestamp();
        let start = end - 365 * DAY;
        let mut d = Dataset {
            scale,
            seed,
            ..Dataset::default()
        };

        // Companies.
        let n_companies = (scale / 5).max(4);
        let combos = WORDS.len() * SUFFIXES.len();
        let mut country_of = Vec::with_capacity(n_companies);
        for i in 0..n_companies {
            let base = format!(
                "{} {}",
                WORDS[i % WORDS.len()],
                SUFFIXES[(i / WORDS.len()) % SUFFIXES.len()]
            );
            let name = if i < combos {
                base
            } else {
                format!("{base} {}", i / combos + 1)
            };
            let true_domain = format!("{}.{}", slug(&name), TLDS[i % TLDS.len()]);
            let domain = match rng.random_range(0..100) {
                0..8 => None,
                8..60 => Some(true_domain.clone()),
                60..72 => Some(format!("www.{true_domain}")),
                72..82 => Some(format!("https://www.{true_domain}/")),
                82..90 => Some(format!("http://{true_domain}/about")),
                _ => Some(true_domain.to_uppercase()),
            };
            let c = weighted(&mut rng, COUNTRY_WEIGHTS.iter().copied());
            country_of.push(c);
            let employees = match rng.random_range(0..100) {
                0..10 => None,
                10..45 => Some(rng.random_range(5..50)),
                45..75 => Some(rng.random_range(50..200)),
                75..92 => Some(rng.random_range(200..1000)),
                _ => Some(rng.random_range(1000..20000)),
            };
            d.companies.push(Company {
                name,
                domain,
                true_domain,
                industry: rng
                    .random_bool(0.88)
                    .then(|| *pick(&mut rng, INDUSTRIES[i % INDUSTRIES.len()])),
                employees,
                country: rng.random_bool(0.9).then(|| country_variant(&mut rng, c)),
                created_at: rng.random_range(start - 365 * DAY..end - 30 * DAY),
                duplicate_of: None,
            });
        }
        // The same company entered twice: once more without its domain (to
        // be matched by name and country) or with another spelling of it.
        let dupes = (n_companies / 33).max(1);
        for k in 0..dupes {
            let of = (k * 31) % n_companies;
            let orig = d.companies[of].clone();
            let c = country_of[of];
            let no_domain = k % 2 == 0;
            d.companies.push(Company {
                domain: if no_domain {
                    None
                } else {
                    Some(format!("https://{}", orig.true_domain))
                },
                country: Some(COUNTRIES[c].0[0]),
                industry: None,
                employees: None,
                created_at: orig.created_at + 30 * DAY,
                duplicate_of: Some(of as u32),
                ..orig
            });
            country_of.push(c);
        }

        // Contacts: spread over the original companies.
        let mut emails = std::collections::HashSet::new();
        for i in 0..scale {
            let company = ((i * 7919) % n_companies) as u32;
            let co = &d.companies[company as usize];
            let first = *pick(&mut rng, FIRST);
            let last = *pick(&mut rng, LAST);
            let free = rng.random_bool(0.07);
            let local = format!("{}.{}", first.to_lowercase(), last.to_lowercase());
            let domain = if free {
                (*pick(&mut rng, FREE_MAIL)).to_string()
            } else {
                co.true_domain.clone()
            };
            let mut email = format!("{local}@{domain}");
            let mut n = 2;
            while !emails.insert(email.clone()) {
                email = format!("{local}{n}@{domain}");
                n += 1;
            }
            let group = weighted(
                &mut rng,
                (0..TITLES.len()).map(|g| if g >= 14 { 3 } else { 10 }),
            );
            let title = if rng.random_bool(0.06) {
                ""
            } else {
                *pick(&mut rng, TITLES[group])
            };
            let cc = country_of[company as usize];
            let country = if rng.random_bool(0.08) {
                ""
            } else {
                country_variant(&mut rng, cc)
            };
            let state = if cc == 0 && rng.random_bool(0.8) {
                pick_in(&mut rng, US_STATES)
            } else {
                ""
            };
            let created_at = rng.random_range(start..end - DAY);
            // A late edit for one contact in five.
            let updated_at = if rng.random_bool(0.2) {
                rng.random_range(created_at..end)
            } else {
                created_at
            };
            d.contacts.push(Contact {
                first,
                last,
                email,
                title,
                country,
                state,
                company,
                created_at,
                updated_at,
                owner: rng.random_bool(0.3).then(|| *pick(&mut rng, OWNERS)),
                lifecycle: if rng.random_bool(0.7) {
                    "lead"
                } else {
                    "marketingqualifiedlead"
                },
                duplicate_of: None,
            });
        }

        // The same person twice in the CRM: about one contact in fifty
        // entered again later under a personal address (an import, a rep
        // typing it in), with the same name and company.
        for k in 0..scale / 50 {
            let of = (k * 37 + 11) % scale;
            let orig = d.contacts[of].clone();
            if FREE_MAIL.iter().any(|f| orig.email.ends_with(f)) {
                continue;
            }
            let local = format!("{}{}", orig.first.to_lowercase(), orig.last.to_lowercase());
            let domain = *pick(&mut rng, FREE_MAIL);
            let mut email = format!("{local}@{domain}");
            let mut n = 2;
            while !emails.insert(email.clone()) {
                email = format!("{local}{n}@{domain}");
                n += 1;
            }
            let created_at = rng.random_range(orig.created_at..end);
            d.contacts.push(Contact {
                email,
                created_at,
                updated_at: created_at,
                owner: None,
                lifecycle: "lead",
                duplicate_of: Some(of as u32),
                ..orig
            });
        }

        // Campaigns.
        let n_campaigns = 30usize.max((scale / 1000).min(200));
        for i in 0..n_campaigns {
            let ch = i % CHANNELS.len();
            let (_, sources, mediums, stem) = CHANNELS[ch];
            d.campaigns.push(Campaign {
                channel: ch,
                name: format!("{stem} {}", 2025 + (i / CHANNELS.len()) % 2),
                utm_source: sources[i % sources.len()],
                utm_medium: mediums[i % mediums.len()],
                started_at: start + (i as i64 * 97 * DAY / n_campaigns as i64 * 3) % (300 * DAY),
                budget: rng.random_range(1..50) * 1000,
            });
        }

        // Form-fill leads: most are contacts again, under another address.
        let n_leads = scale / 2;
        for i in 0..n_leads {
            let kind = rng.random_range(0..100);
            let form = *pick(
                &mut rng,
                &["Demo request", "Ebook", "Webinar signup", "Contact us"],
            );
            if kind < 60 && scale > 0 {
                let c = rng.random_range(0..scale) as u32;
                let ct = &d.contacts[c as usize];
                let co = &d.companies[ct.company as usize];
                let personal = kind >= 42;
                let email = if personal {
                    format!(
                        "{}{}@{}",
                        ct.first.to_lowercase(),
                        ct.last.to_lowercase(),
                        pick(&mut rng, FREE_MAIL)
                    )
                } else if kind % 2 == 0 {
                    ct.email.to_uppercase()
                } else {
                    format!(" {} ", ct.email)
                };
                let cc = country_of[ct.company as usize];
                d.leads.push(Lead {
                    email,
                    first: ct.first,
                    last: ct.last,
                    company: co.name.clone(),
                    website: Some(match rng.random_range(0..3) {
                        0 => co.true_domain.clone(),
                        1 => format!("https://www.{}", co.true_domain),
                        _ => format!("www.{}/pricing", co.true_domain),
                    }),
                    title: if rng.random_bool(0.5) {
                        ct.title
                    } else {
                        pick_in(&mut rng, TITLES)
                    },
                    country: country_variant(&mut rng, cc),
                    form,
                    submitted_at: rng.random_range(ct.created_at.min(end - DAY)..end),
                    same_as: Some(c),
                });
            } else {
                let company = rng.random_range(0..n_companies);
                let co = &d.companies[company];
                let first = *pick(&mut rng, FIRST);
                let last = *pick(&mut rng, LAST);
                let local = format!("{}.{}.{i}", first.to_lowercase(), last.to_lowercase());
                let email = format!("{local}@{}", co.true_domain);
                d.leads.push(Lead {
                    email,
                    first,
                    last,
                    company: co.name.clone(),
                    website: rng.random_bool(0.7).then(|| co.true_domain.clone()),
                    title: pick_in(&mut rng, TITLES),
                    country: country_variant(&mut rng, country_of[company]),
                    form,
                    submitted_at: rng.random_range(start..end),
                    same_as: None,
                });
            }
        }
        d.leads.sort_by_key(|l| l.submitted_at);

        // Deals: about one company in six, one or two deals each.
        let mut by_company: Vec<Vec<u32>> = vec![Vec::new(); n_companies];
        for (i, c) in d.contacts.iter().enumerate() {
            by_company[c.company as usize].push(i as u32);
        }
        let mut deal_contacts = vec![false; d.contacts.len()];
        for (company, members) in by_company.iter().enumerate() {
            if members.is_empty() || !rng.random_bool(0.17) {
                continue;
            }
            for k in 0..rng.random_range(1..=2) {
                let created_at = rng.random_range(start + 60 * DAY..end - 20 * DAY);
                let roll = rng.random_range(0..100);
                let stage = match roll {
                    0..35 => "closedwon",
                    35..70 => "closedlost",
                    _ => *pick(&mut rng, OPEN_STAGES),
                };
                let close_at = if roll < 70 {
                    (created_at + rng.random_range(10..120) * DAY).min(end - DAY)
                } else {
                    end + rng.random_range(10..90) * DAY
                };
                let employees = d.companies[company].employees.unwrap_or(100);
                let amount =
                    (employees.clamp(10, 5000) * rng.random_range(40..120)).max(3000) / 100 * 100;
                let n = members.len().min(rng.random_range(1..=3));
                let contacts: Vec<u32> = members.iter().take(n).copied().collect();
                for &c in &contacts {
                    deal_contacts[c as usize] = true;
                    let ct = &mut d.contacts[c as usize];
                    ct.lifecycle = if stage == "closedwon" {
                        "customer"
                    } else {
                        "opportunity"
                    };
                    if ct.created_at > created_at {
                        ct.created_at = created_at - rng.random_range(5..60) * DAY;
                        ct.updated_at = ct.updated_at.max(ct.created_at);
                    }
                }
                d.deals.push(Deal {
                    company: company as u32,
                    contacts,
                    name: format!(
                        "{} - {}",
                        d.companies[company].name,
                        ["New business", "Expansion"][k % 2]
                    ),
                    amount,
                    stage,
                    created_at,
                    close_at,
                });
            }
        }

        // Touches: about ten per contact, more for people in deals; the
        // first ones near the moment the person became known.
        let weights = || TOUCH_KINDS.iter().map(|(_, w)| *w);
        let push_touches =
            |d: &mut Dataset, person: Person, from: i64, n: usize, rng: &mut StdRng| {
                for _ in 0..n {
                    let campaign = rng.random_range(0..d.campaigns.len()) as u16;
                    let occurred_at = rng.random_range(from.min(end - 1)..end);
                    let late = rng.random_bool(0.05);
                    let arrived_at = if late {
                        (occurred_at + rng.random_range(1..10) * DAY).min(end + 10 * DAY)
                    } else {
                        occurred_at + rng.random_range(0..600)
                    };
                    d.touches.push(Touch {
                        person,
                        campaign,
                        kind: weighted(rng, weights()) as u8,
                        spelling: rng.random_range(0..4),
                        occurred_at,
                        arrived_at,
                        shouted: rng.random_bool(0.03),
                    });
                }
            };
        for (i, on_deal) in deal_contacts.iter().enumerate() {
            let from = d.contacts[i].created_at - rng.random_range(0..90) * DAY;
            let n = if *on_deal {
                rng.random_range(8..30)
            } else {
                rng.random_range(0..19)
            };
            push_touches(&mut d, Person::Contact(i as u32), from, n, &mut rng);
        }
        for i in 0..d.leads.len() {
            if d.leads[i].same_as.is_none() {
                let from = d.leads[i].submitted_at - 30 * DAY;
                let n = rng.random_range(0..6);
                push_touches(&mut d, Person::Lead(i as u32), from, n, &mut rng);
            }
        }
        d.touches.sort_by_key(|t| (t.arrived_at, t.occurred_at));

        // Sequencer email events for about a third of the contacts.
        for i in 0..scale {
            if !rng.random_bool(0.33) {
                continue;
            }
            let sequence = rng.random_range(0..SEQUENCES.len()) as u8;
            let mut at = rng.random_range(start..end - 30 * DAY);
            for step in 1..=3u8 {
                let mut event = |kind: &'static str,
                                 outcome: Option<&'static str>,
                                 at: i64,
                                 rng: &mut StdRng| {
                    let arrived_at = if rng.random_bool(0.04) {
                        at + rng.random_range(1..5) * DAY
                    } else {
                        at + 60
                    };
                    d.email_events.push(EmailEvent {
                        contact: i as u32,
                        sequence,
                        step,
                        kind,
                        outcome,
                        occurred_at: at,
                        arrived_at,
                    });
                };
                event("sent", None, at, &mut rng);
                if rng.random_bool(0.03) {
                    event("bounced", None, at + 5, &mut rng);
                    break;
                }
                if rng.random_bool(0.5) {
                    event("opened", None, at + rng.random_range(60..2 * DAY), &mut rng);
                    if rng.random_bool(0.2) {
                        event("clicked", None, at + 2 * DAY, &mut rng);
                    }
                }
                if rng.random_bool(0.08) {
                    let o = OUTCOMES[weighted(&mut rng, OUTCOMES.iter().map(|(_, w)| *w))].0;
                    event(
                        "replied",
                        Some(o),
                        at + rng.random_range(DAY..4 * DAY),
                        &mut rng,
                    );
                    break;
                }
                at += rng.random_range(2..6) * DAY;
            }
        }
        d.email_events
            .sort_by_key(|e| (e.arrived_at, e.occurred_at));
        d
    }

    pub fn email_of(&self, p: Person) -> &str {
        match p {
            Person::Contact(i) => &self.contacts[i as usize].email,
            Person::Lead(i) => &self.leads[i as usize].email,
        }
    }

    /// The marketing platform's campaign record.
    pub fn campaign_json(&self, i: usize) -> Value {
        let c = &self.campaigns[i];
        json!({
            "id": i + 1,
            "name": c.name,
            "utm_source": c.utm_source,
            "utm_medium": c.utm_medium,
            "started_at": iso(c.started_at),
            "budget": c.budget,
            "updated_at": iso(c.started_at),
        })
    }

    pub fn touch_json(&self, i: usize) -> Value {
        let t = &self.touches[i];
        let c = &self.campaigns[t.campaign as usize];
        let (_, sources, mediums, _) = CHANNELS[c.channel];
        // Trackers spell UTM tags as they were typed into links.
        let (source, medium) = match t.spelling {
            0 | 1 => (c.utm_source, c.utm_medium),
            2 => (sources[(i / 7) % sources.len()], c.utm_medium),
            _ => (c.utm_source, mediums[(i / 11) % mediums.len()]),
        };
        let email = self.email_of(t.person);
        json!({
            "id": i as u64 + 1,
            "email": if t.shouted { email.to_uppercase() } else { email.to_string() },
            "type": TOUCH_KINDS[t.kind as usize].0,
            "campaign_id": t.campaign as u64 + 1,
            "utm_source": source,
            "utm_medium": medium,
            "occurred_at": iso(t.occurred_at),
            "updated_at": iso(t.arrived_at),
        })
    }

    pub fn lead_json(&self, i: usize) -> Value {
        let l = &self.leads[i];
        json!({
            "id": i as u64 + 1,
            "email": l.email,
            "first_name": l.first,
            "last_name": l.last,
            "company": l.company,
            "website": l.website,
            "job_title": l.title,
            "country": l.country,
            "form": l.form,
            "submitted_at": iso(l.submitted_at),
            "updated_at": iso(l.submitted_at),
        })
    }

    pub fn email_event_json(&self, i: usize) -> Value {
        let e = &self.email_events[i];
        json!({
            "id": i as u64 + 1,
            "email": self.contacts[e.contact as usize].email,
            "sequence": SEQUENCES[e.sequence as usize],
            "step": e.step,
            "event": e.kind,
            "reply_outcome": e.outcome,
            "occurred_at": iso(e.occurred_at),
            "updated_at": iso(e.arrived_at),
        })
    }

    /// CRM properties of company `i`, as HubSpot holds them.
    pub fn company_properties(&self, i: usize) -> Vec<(&'static str, String)> {
        let c = &self.companies[i];
        let mut p = vec![("name", c.name.clone())];
        if let Some(d) = &c.domain {
            p.push(("domain", d.clone()));
        }
        if let Some(x) = c.industry {
            p.push(("industry", x.to_string()));
        }
        if let Some(x) = c.employees {
            p.push(("numberofemployees", x.to_string()));
        }
        if let Some(x) = c.country {
            p.push(("country", x.to_string()));
        }
        p
    }

    pub fn contact_properties(&self, i: usize) -> Vec<(&'static str, String)> {
        let c = &self.contacts[i];
        let mut p = vec![
            ("email", c.email.clone()),
            ("firstname", c.first.to_string()),
            ("lastname", c.last.to_string()),
            ("company", self.companies[c.company as usize].name.clone()),
            ("lifecyclestage", c.lifecycle.to_string()),
        ];
        for (k, v) in [
            ("jobtitle", c.title),
            ("country", c.country),
            ("state", c.state),
        ] {
            if !v.is_empty() {
                p.push((k, v.to_string()));
            }
        }
        if let Some(o) = c.owner {
            p.push(("hubspot_owner_id", o.to_string()));
        }
        p
    }

    pub fn deal_properties(&self, i: usize) -> Vec<(&'static str, String)> {
        let d = &self.deals[i];
        vec![
            ("dealname", d.name.clone()),
            ("amount", d.amount.to_string()),
            ("dealstage", d.stage.to_string()),
            ("pipeline", "default".to_string()),
            ("closedate", iso(d.close_at)),
        ]
    }

    /// Every stream as JSON lines, for `ferry generate --out`.
    pub fn streams(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("companies", self.companies.len()),
            ("contacts", self.contacts.len()),
            ("deals", self.deals.len()),
            ("campaigns", self.campaigns.len()),
            ("touches", self.touches.len()),
            ("leads", self.leads.len()),
            ("email_events", self.email_events.len()),
        ]
    }

    /// Record `i` of a stream as a flat JSON object (CRM records with their
    /// properties, created and updated times; deals with their contacts).
    pub fn record(&self, stream: &str, i: usize) -> Value {
        let props = |p: Vec<(&'static str, String)>| {
            p.into_iter()
                .map(|(k, v)| (k.to_string(), Value::String(v)))
                .collect::<serde_json::Map<_, _>>()
        };
        match stream {
            "companies" => {
                let mut m = props(self.company_properties(i));
                m.insert("id".into(), json!(i + 1));
                m.insert(
                    "created_at".into(),
                    json!(iso(self.companies[i].created_at)),
                );
                Value::Object(m)
            }
            "contacts" => {
                let c = &self.contacts[i];
                let mut m = props(self.contact_properties(i));
                m.insert("id".into(), json!(i + 1));
                m.insert("company_id".into(), json!(c.company + 1));
                m.insert("created_at".into(), json!(iso(c.created_at)));
                m.insert("updated_at".into(), json!(iso(c.updated_at)));
                Value::Object(m)
            }
            "deals" => {
                let d = &self.deals[i];
                let mut m = props(self.deal_properties(i));
                m.insert("id".into(), json!(i + 1));
                m.insert("company_id".into(), json!(d.company + 1));
                m.insert(
                    "contact_ids".into(),
                    json!(d.contacts.iter().map(|c| c + 1).collect::<Vec<_>>()),
                );
                m.insert("created_at".into(), json!(iso(d.created_at)));
                Value::Object(m)
            }
            "campaigns" => self.campaign_json(i),
            "touches" => self.touch_json(i),
            "leads" => self.lead_json(i),
            _ => self.email_event_json(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_and_the_mess_is_there() {
        let a = Dataset::generate(2000, 7);
        let b = Dataset::generate(2000, 7);
        for (s, n) in a.streams() {
            assert!(n > 0, "{s} is empty");
            for i in [0, n / 2, n - 1] {
                assert_eq!(a.record(s, i), b.record(s, i), "{s}[{i}]");
            }
        }
        let c = Dataset::generate(2000, 8);
        assert_ne!(a.record("contacts", 5), c.record("contacts", 5));
        // The mess a starter project must clean up.
        let titles: std::collections::BTreeSet<_> = a.contacts.iter().map(|c| c.title).collect();
        assert!(titles.contains("VP Marketing") && titles.contains("Vice President, Marketing"));
        assert!(a.contacts.iter().any(|c| c.country == "U.S.A."));
        assert!(
            a.contacts
                .iter()
                .any(|c| FREE_MAIL.iter().any(|f| c.email.ends_with(f)))
        );
        assert!(a.companies.iter().any(|c| c.domain.is_none()));
        assert!(a.companies.iter().any(|c| c.duplicate_of.is_some()));
        assert!(
            a.contacts
                .iter()
                .filter(|c| c.duplicate_of.is_some())
                .count()
                > 20
        );
        assert!(
            a.leads
                .iter()
                .any(|l| l.same_as.is_some() && l.email.ends_with("gmail.com"))
        );
        assert!(a.touches.iter().any(|t| t.arrived_at > t.occurred_at + DAY));
        assert!(a.deals.iter().any(|d| d.stage == "closedwon"));
        assert!(
            a.touches
                .windows(2)
                .all(|w| w[0].arrived_at <= w[1].arrived_at)
        );
        // About ten touches per contact.
        let per = a.touches.len() as f64 / 2000.0;
        assert!((7.0..14.0).contains(&per), "{per}");
    }
}
