//! Serving a generated dataset the way vendors would: the CRM side
//! (companies, contacts, deals and their associations) from the HubSpot
//! emulator, the marketing platform (campaigns, touches, form-fill leads)
//! and the sequencer (email events) from the REST emulator.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use super::generate::Dataset;
use crate::error::Result;
use crate::sim::hubspot::{self, RunningSim, SimConfig};
use crate::sim::rest::{self, Collection, Collections, RestAuth, RestConfig, RunningRest};

/// The bearer token the demo's marketing and sequencer API accepts.
pub const MARKETING_TOKEN: &str = "ferry-demo-marketing";

/// Contact properties the starter project's sync writes (HubSpot needs
/// custom properties defined before they can be written).
pub const CUSTOM_CONTACT_PROPERTIES: &[(&str, &str)] = &[
    ("ferry_lead_score", "number"),
    ("ferry_fit_score", "number"),
    ("ferry_persona", "string"),
    ("ferry_seniority", "string"),
    ("ferry_mql_date", "datetime"),
    ("ferry_first_touch_channel", "string"),
    ("ferry_last_touch_channel", "string"),
];

/// The two emulators, loaded.
pub struct Served {
    pub hubspot: RunningSim,
    pub marketing: RunningRest,
}

struct Stream {
    data: Arc<Dataset>,
    name: &'static str,
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

impl Collection for Stream {
    fn name(&self) -> &str {
        self.name
    }

    fn len(&self) -> usize {
        match self.name {
            "campaigns" => self.data.campaigns.len(),
            "touches" => self.data.touches.len(),
            "leads" => self.data.leads.len(),
            _ => self.data.email_events.len(),
        }
    }

    fn updated_at(&self, i: usize) -> DateTime<Utc> {
        at(match self.name {
            "campaigns" => self.data.campaigns[i].started_at,
            "touches" => self.data.touches[i].arrived_at,
            "leads" => self.data.leads[i].submitted_at,
            _ => self.data.email_events[i].arrived_at,
        })
    }

    fn record(&self, i: usize) -> Value {
        self.data.record(self.name, i)
    }
}

/// Load the CRM half of `data` into a new HubSpot emulator and serve the
/// rest from a REST emulator.
pub async fn serve(
    data: Arc<Dataset>,
    hubspot_config: SimConfig,
    hubspot_addr: SocketAddr,
    marketing_addr: SocketAddr,
) -> Result<Served> {
    let hubspot = hubspot::start(hubspot_config, hubspot_addr).await?;
    let d = data.clone();
    hubspot.with_crm(move |crm| {
        for (name, kind) in CUSTOM_CONTACT_PROPERTIES {
            crm.define_property("contacts", name, kind);
        }
        let props = |p: Vec<(&'static str, String)>| -> BTreeMap<String, String> {
            p.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
        };
        let mut company_ids = Vec::with_capacity(d.companies.len());
        for (i, c) in d.companies.iter().enumerate() {
            let r = crm.create("companies", props(d.company_properties(i)));
            crm.backdate("companies", r.id, at(c.created_at), at(c.created_at));
            company_ids.push(r.id);
        }
        let mut contact_ids = Vec::with_capacity(d.contacts.len());
        for (i, c) in d.contacts.iter().enumerate() {
            let r = crm.create("contacts", props(d.contact_properties(i)));
            crm.backdate("contacts", r.id, at(c.created_at), at(c.updated_at));
            crm.associate(
                "contacts",
                r.id,
                "companies",
                company_ids[c.company as usize],
            );
            contact_ids.push(r.id);
        }
        for (i, deal) in d.deals.iter().enumerate() {
            let r = crm.create("deals", props(d.deal_properties(i)));
            crm.backdate("deals", r.id, at(deal.created_at), at(deal.created_at));
            crm.associate(
                "deals",
                r.id,
                "companies",
                company_ids[deal.company as usize],
            );
            for c in &deal.contacts {
                crm.associate("deals", r.id, "contacts", contact_ids[*c as usize]);
            }
        }
    });
    let collections = ["campaigns", "touches", "leads", "email_events"]
        .into_iter()
        .map(|name| {
            Arc::new(Stream {
                data: data.clone(),
                name,
            }) as Arc<dyn Collection>
        })
        .collect();
    let marketing = rest::start(
        RestConfig {
            collections: Collections(collections),
            records: 0,
            sequences: 0,
            auth: RestAuth::Bearer(MARKETING_TOKEN.into()),
            per_second: 0,
            max_page: 1000,
            ..RestConfig::default()
        },
        marketing_addr,
    )
    .await?;
    Ok(Served { hubspot, marketing })
}

/// Custom fields the starter project's Salesforce syncs write (on Contact
/// and Lead), and the lifecycle stage the org carries.
pub const SALESFORCE_CUSTOM_FIELDS: &[(&str, &str)] = &[
    ("Ferry_Lead_Score__c", "double"),
    ("Ferry_Fit_Score__c", "double"),
    ("Ferry_Persona__c", "string"),
    ("Ferry_Seniority__c", "string"),
    ("Ferry_MQL_Date__c", "date"),
    ("Ferry_First_Touch_Channel__c", "string"),
    ("Ferry_Last_Touch_Channel__c", "string"),
    ("Lifecycle_Stage__c", "string"),
];

/// Salesforce's standard opportunity stage for a HubSpot deal stage.
fn stage_name(hubspot_stage: &str) -> &'static str {
    match hubspot_stage {
        "closedwon" => "Closed Won",
        "closedlost" => "Closed Lost",
        "appointmentscheduled" => "Prospecting",
        "qualifiedtobuy" => "Qualification",
        "presentationscheduled" => "Needs Analysis",
        "decisionmakerboughtin" => "Proposal/Price Quote",
        _ => "Negotiation/Review",
    }
}

/// What the Salesforce org was loaded with.
#[derive(Debug, Clone, Copy, Default)]
pub struct SalesforceLoad {
    pub accounts: usize,
    pub contacts: usize,
    pub leads: usize,
    pub opportunities: usize,
    pub contact_roles: usize,
    /// Records the org refused (a value its checks reject), left out as a
    /// data-entry form would.
    pub refused: usize,
}

/// Load the CRM half of `data` into a new Salesforce emulator: companies as
/// accounts, people at the `lead` stage as leads (unconverted, with their
/// company's name) and everyone else as contacts of their account, deals as
/// opportunities with standard stage names, and who is on each deal as
/// opportunity contact roles. Created dates are the generated ones.
pub async fn serve_salesforce(
    data: Arc<Dataset>,
    config: crate::sim::salesforce::SimConfig,
    addr: SocketAddr,
) -> Result<(crate::sim::salesforce::RunningSim, SalesforceLoad)> {
    use crate::sim::salesforce::FieldDef;
    use serde_json::json;
    let sim = crate::sim::salesforce::start(config, addr).await?;
    let d = data;
    let load = sim
        .with_org(move |org| {
            let mut load = SalesforceLoad::default();
            for object in ["Contact", "Lead"] {
                if let Some(o) = org.object_mut(object) {
                    for (name, kind) in SALESFORCE_CUSTOM_FIELDS {
                        o.define(FieldDef::new(name, kind));
                    }
                }
            }
            // Insert one record; if the org refuses it, once more without
            // its email (a malformed address), else leave it out.
            let mut insert = |object: &str, m: serde_json::Map<String, Value>, created: i64| {
                let first = org.insert(object, std::slice::from_ref(&m));
                let id = match first {
                    Ok(mut r) if r[0].is_ok() => r.remove(0).ok().map(|(id, _)| id),
                    _ => {
                        let mut m = m;
                        m.remove("Email");
                        match org.insert(object, &[m]) {
                            Ok(mut r) if r[0].is_ok() => r.remove(0).ok().map(|(id, _)| id),
                            _ => None,
                        }
                    }
                };
                if let Some(id) = &id {
                    org.backdate(object, id, at(created), at(created));
                }
                id
            };
            let obj = |pairs: Vec<(&str, Value)>| -> serde_json::Map<String, Value> {
                pairs
                    .into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.to_string(), v))
                    .collect()
            };
            let mut accounts = Vec::with_capacity(d.companies.len());
            for c in &d.companies {
                let id = insert(
                    "Account",
                    obj(vec![
                        ("Name", json!(c.name)),
                        ("Website", json!(c.domain)),
                        ("Industry", json!(c.industry)),
                        ("NumberOfEmployees", json!(c.employees)),
                        ("BillingCountry", json!(c.country)),
                    ]),
                    c.created_at,
                );
                load.accounts += id.is_some() as usize;
                load.refused += id.is_none() as usize;
                accounts.push(id);
            }
            let text = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
            let mut contacts = Vec::with_capacity(d.contacts.len());
            for c in &d.contacts {
                let owner = c.owner.map(|o| format!("005{o:0>12}AAA"));
                let company = &d.companies[c.company as usize];
                let (object, m) = if c.lifecycle == "lead" {
                    (
                        "Lead",
                        obj(vec![
                            ("Email", json!(c.email)),
                            ("FirstName", text(c.first)),
                            ("LastName", text(c.last)),
                            ("Title", text(c.title)),
                            ("Company", json!(company.name)),
                            ("Country", text(c.country)),
                            ("State", text(c.state)),
                            ("Status", json!("Open - Not Contacted")),
                            ("IsConverted", json!(false)),
                            ("OwnerId", json!(owner)),
                            ("Lifecycle_Stage__c", json!(c.lifecycle)),
                        ]),
                    )
                } else {
                    (
                        "Contact",
                        obj(vec![
                            ("Email", json!(c.email)),
                            ("FirstName", text(c.first)),
                            ("LastName", text(c.last)),
                            ("Title", text(c.title)),
                            ("AccountId", json!(accounts[c.company as usize])),
                            ("MailingCountry", text(c.country)),
                            ("MailingState", text(c.state)),
                            ("OwnerId", json!(owner)),
                            ("Lifecycle_Stage__c", json!(c.lifecycle)),
                        ]),
                    )
                };
                let id = insert(object, m, c.created_at);
                match (&id, object) {
                    (Some(_), "Lead") => load.leads += 1,
                    (Some(_), _) => load.contacts += 1,
                    (None, _) => load.refused += 1,
                }
                contacts.push(id.filter(|_| object == "Contact"));
            }
            for deal in &d.deals {
                let close = at(deal.close_at).format("%Y-%m-%d").to_string();
                let id = insert(
                    "Opportunity",
                    obj(vec![
                        ("Name", json!(deal.name)),
                        ("StageName", json!(stage_name(deal.stage))),
                        ("Amount", json!(deal.amount as f64)),
                        ("CloseDate", json!(close)),
                        ("IsWon", json!(deal.stage == "closedwon")),
                        (
                            "IsClosed",
                            json!(matches!(deal.stage, "closedwon" | "closedlost")),
                        ),
                        ("AccountId", json!(accounts[deal.company as usize])),
                    ]),
                    deal.created_at,
                );
                let Some(opp) = id else {
                    load.refused += 1;
                    continue;
                };
                load.opportunities += 1;
                for (n, c) in deal.contacts.iter().enumerate() {
                    let Some(contact) = &contacts[*c as usize] else {
                        continue;
                    };
                    let role = insert(
                        "OpportunityContactRole",
                        obj(vec![
                            ("OpportunityId", json!(opp)),
                            ("ContactId", json!(contact)),
                            (
                                "Role",
                                json!(if n == 0 {
                                    "Decision Maker"
                                } else {
                                    "Influencer"
                                }),
                            ),
                            ("IsPrimary", json!(n == 0)),
                        ]),
                        deal.created_at,
                    );
                    load.contact_roles += role.is_some() as usize;
                }
            }
            load
        })
        .ok_or_else(|| {
            crate::error::Error::Internal("the Salesforce emulator's org is locked".into())
        })?;
    Ok((sim, load))
}
