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
