//! The generated events as one CSV file, so that other systems (Apache
//! Flink in `peers/flink-nexmark/`) can run the same queries over exactly
//! the events Spate's runs see.
//!
//! Every line holds one event in [`COLUMNS`]: the kind (0 person,
//! 1 auction, 2 bid) and the event time (ms) first, then the person's,
//! auction's and bid's fields, of which only the event's own kind is
//! filled; the others are empty. A field holding a comma or a double quote
//! is quoted as RFC 4180 says.

use std::io::{self, Write};

use crate::generator::GeneratorConfig;
use crate::model::Event;

/// The file's columns, in order (the file itself has no header line).
pub const COLUMNS: [&str; 21] = [
    "event_type",
    "date_time",
    "person_id",
    "person_name",
    "person_email",
    "person_credit_card",
    "person_city",
    "person_state",
    "auction_id",
    "auction_item_name",
    "auction_description",
    "auction_initial_bid",
    "auction_reserve",
    "auction_expires",
    "auction_seller",
    "auction_category",
    "bid_auction",
    "bid_bidder",
    "bid_price",
    "bid_channel",
    "bid_url",
];

/// Columns before the person's fields, and each kind's field count.
const LEADING: usize = 2;
const PERSON_FIELDS: usize = 6;
const AUCTION_FIELDS: usize = 8;
const BID_FIELDS: usize = 5;

/// One event's CSV line, without the line end.
pub fn csv_line(event: &Event) -> String {
    let (kind, before, fields, after) = match event {
        Event::Person(p) => (
            0,
            0,
            vec![
                p.id.to_string(),
                p.name.clone(),
                p.email.clone(),
                p.credit_card.clone(),
                p.city.clone(),
                p.state.clone(),
            ],
            AUCTION_FIELDS + BID_FIELDS,
        ),
        Event::Auction(a) => (
            1,
            PERSON_FIELDS,
            vec![
                a.id.to_string(),
                a.item_name.clone(),
                a.description.clone(),
                a.initial_bid.to_string(),
                a.reserve.to_string(),
                a.expires.to_string(),
                a.seller.to_string(),
                a.category.to_string(),
            ],
            BID_FIELDS,
        ),
        Event::Bid(b) => (
            2,
            PERSON_FIELDS + AUCTION_FIELDS,
            vec![
                b.auction.to_string(),
                b.bidder.to_string(),
                b.price.to_string(),
                b.channel.clone(),
                b.url.clone(),
            ],
            0,
        ),
    };
    let mut cells = Vec::with_capacity(COLUMNS.len());
    cells.push(kind.to_string());
    cells.push(event.date_time().to_string());
    cells.extend(std::iter::repeat_n(String::new(), before));
    cells.extend(fields.iter().map(|f| quoted(f)));
    cells.extend(std::iter::repeat_n(String::new(), after));
    debug_assert_eq!(
        cells.len(),
        LEADING + PERSON_FIELDS + AUCTION_FIELDS + BID_FIELDS
    );
    cells.join(",")
}

/// `field` as a CSV cell: quoted when it holds a comma, quote or line end.
fn quoted(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// Writes all of `config`'s events, one line each, in event order.
pub fn write_csv(config: &GeneratorConfig, out: &mut impl Write) -> io::Result<()> {
    for event in config.events() {
        writeln!(out, "{}", csv_line(&event))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Bid;

    #[test]
    fn every_line_has_every_column_and_its_kind_and_time() {
        let config = GeneratorConfig {
            seed: 3,
            events: 200,
            event_rate: 1_000,
        };
        let mut out = Vec::new();
        write_csv(&config, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 200);
        for (n, (line, event)) in lines.iter().zip(config.events()).enumerate() {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), COLUMNS.len(), "line {n}: {line}");
            assert_eq!(cells[1], event.date_time().to_string());
            match event {
                Event::Person(p) => {
                    assert_eq!(cells[0], "0");
                    assert_eq!(
                        cells[2..8],
                        [
                            p.id.to_string(),
                            p.name,
                            p.email,
                            p.credit_card,
                            p.city,
                            p.state
                        ]
                    );
                    assert!(cells[8..].iter().all(|c| c.is_empty()));
                }
                Event::Auction(a) => {
                    assert_eq!(cells[0], "1");
                    assert!(cells[2..8].iter().all(|c| c.is_empty()));
                    assert_eq!(cells[8], a.id.to_string());
                    assert_eq!(cells[14], a.seller.to_string());
                    assert_eq!(cells[15], a.category.to_string());
                    assert!(cells[16..].iter().all(|c| c.is_empty()));
                }
                Event::Bid(b) => {
                    assert_eq!(cells[0], "2");
                    assert!(cells[2..16].iter().all(|c| c.is_empty()));
                    assert_eq!(
                        cells[16..],
                        [
                            b.auction.to_string(),
                            b.bidder.to_string(),
                            b.price.to_string(),
                            b.channel,
                            b.url
                        ]
                    );
                }
            }
        }
    }

    #[test]
    fn fields_with_commas_or_quotes_are_quoted() {
        let bid = Event::Bid(Bid {
            auction: 1,
            bidder: 2,
            price: 3,
            channel: "a,\"b\"".to_string(),
            url: "u".to_string(),
            date_time: 4,
        });
        assert!(csv_line(&bid).ends_with(",1,2,3,\"a,\"\"b\"\"\",u"));
    }
}
