//! The API's request and response bodies (camelCase JSON) and the validation of requests.

use keel_processors::orders::OrderView;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::problem::{Kind, Problem};

/// `POST /orders`: place an order from a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlaceOrderRequest {
    /// The cart to order (1 to 64 characters).
    pub cart_id: String,
    /// The PSP's token for the customer's payment method (1 to 255 characters).
    pub payment_method: String,
    #[serde(deserialize_with = "crate::body::object")]
    pub shipping_address: ShippingAddressBody,
}

/// Where the order ships to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ShippingAddressBody {
    pub name: String,
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case, e.g. `DE`.
    pub country: String,
}

/// `POST /orders/{id}/cancel`: the body is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CancelRequest {
    /// Why (up to 255 characters); `CUSTOMER_CANCELLED` when absent.
    #[serde(default)]
    pub reason: Option<String>,
}

/// 202 for `POST /orders`: the command is on Kafka; the order is `RECEIVED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub order_id: String,
    /// `RECEIVED` for a placed order, `CANCELLATION_REQUESTED` for a cancel.
    pub status: String,
}

/// An order the API accepted whose first decision the order sink has not written yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedOrder {
    pub order_id: String,
    /// Always `RECEIVED`.
    pub status: String,
    /// When the API accepted it, RFC 3339 UTC.
    pub received_at: String,
}

/// `GET /orders/{id}`: an order the sink wrote, or one only received so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OrderResource {
    Stored(Box<OrderView>),
    Received(ReceivedOrder),
}

/// `GET /health` and `GET /ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct StatusBody {
    /// `UP` or `READY`.
    pub status: String,
}

/// `CUSTOMER_CANCELLED`: the reason of a cancel without one.
pub const DEFAULT_CANCEL_REASON: &str = "CUSTOMER_CANCELLED";

fn check_text(field: &str, value: &str, min: usize, max: usize) -> Option<Problem> {
    let len = value.trim().chars().count();
    if len < min {
        return Some(
            Problem::new(Kind::InvalidField, format!("{field} must not be empty")).field(field),
        );
    }
    if value.chars().count() > max {
        return Some(
            Problem::new(
                Kind::InvalidField,
                format!("{field} must be at most {max} characters"),
            )
            .field(field),
        );
    }
    if value.chars().any(is_unsafe_text_char) {
        return Some(
            Problem::new(
                Kind::InvalidField,
                format!(
                    "{field} must not contain control characters or bidirectional formatting \
                     characters"
                ),
            )
            .field(field),
        );
    }
    None
}

impl PlaceOrderRequest {
    /// The first invalid value, as a 422 naming the field.
    pub fn validate(&self) -> Result<(), Problem> {
        let a = &self.shipping_address;
        let checks = [
            check_text("cartId", &self.cart_id, 1, 64),
            check_text("paymentMethod", &self.payment_method, 1, 255),
            check_text("shippingAddress.name", &a.name, 1, 200),
            check_text("shippingAddress.line1", &a.line1, 1, 200),
            a.line2
                .as_deref()
                .and_then(|l| check_text("shippingAddress.line2", l, 0, 200)),
            check_text("shippingAddress.city", &a.city, 1, 100),
            check_text("shippingAddress.postalCode", &a.postal_code, 1, 32),
        ];
        if let Some(problem) = checks.into_iter().flatten().next() {
            return Err(problem);
        }
        if !is_country_code(&a.country) {
            return Err(Problem::new(
                Kind::InvalidField,
                format!(
                    "shippingAddress.country must be an ISO 3166-1 alpha-2 code in upper case \
                     such as DE or US, got {:?}",
                    a.country
                ),
            )
            .field("shippingAddress.country"));
        }
        Ok(())
    }
}

impl CancelRequest {
    pub fn validate(&self) -> Result<(), Problem> {
        match self.reason.as_deref() {
            Some(reason) => check_text("reason", reason, 1, 255).map_or(Ok(()), Err),
            None => Ok(()),
        }
    }
}

/// Whether `code` is an officially assigned ISO 3166-1 alpha-2 code.
pub fn is_country_code(code: &str) -> bool {
    code.len() == 2 && COUNTRIES.split(' ').any(|c| c == code)
}

/// The 249 officially assigned ISO 3166-1 alpha-2 codes.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ \
BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ \
DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU \
ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ \
LA LB LC LI LK LR LS LT LU LV LY \
MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ \
NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA \
RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ \
TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ \
VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// Characters free text may not carry: control characters (C0, DEL, C1) and the Unicode
/// bidirectional formatting characters (U+061C, U+200E, U+200F, U+202A–U+202E,
/// U+2066–U+2069), which can make a reason or an address read differently from what is
/// stored (the "Trojan Source" class, CVE-2021-42574).
pub fn is_unsafe_text_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// A client-supplied id as it is echoed in a problem's detail: at most 64 characters, then
/// an ellipsis and the full length, so a 5,000-character id does not come back in full.
pub fn shown(id: &str) -> String {
    const MAX: usize = 64;
    let count = id.chars().count();
    if count <= MAX {
        format!("{id:?}")
    } else {
        let head: String = id.chars().take(MAX).collect();
        format!("{head:?}… ({count} characters)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PlaceOrderRequest {
        PlaceOrderRequest {
            cart_id: "cart-1".into(),
            payment_method: "pm_card_visa".into(),
            shipping_address: ShippingAddressBody {
                name: "Ada Lovelace".into(),
                line1: "Main St 1".into(),
                line2: None,
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            },
        }
    }

    #[test]
    fn bidirectional_formatting_characters_are_unsafe_in_text() {
        assert!(is_unsafe_text_char('\u{202E}'));
        assert!(is_unsafe_text_char('\u{2067}'));
        assert!(is_unsafe_text_char('\n'));
        assert!(!is_unsafe_text_char('é'));
        assert!(!is_unsafe_text_char('א'));
        let mut r = request();
        r.shipping_address.name = "Ada \u{202E}ecalevoL".into();
        let p = r.validate().expect_err("bidi");
        assert_eq!(p.field.as_deref(), Some("shippingAddress.name"));
    }

    #[test]
    fn a_long_id_is_shown_cut_with_its_length() {
        assert_eq!(shown("ord-1"), "\"ord-1\"");
        let long = "x".repeat(5_000);
        let text = shown(&long);
        assert!(text.len() < 100, "{text}");
        assert!(text.ends_with("(5000 characters)"), "{text}");
    }

    #[test]
    fn the_country_list_has_every_assigned_code_once() {
        let codes: Vec<&str> = COUNTRIES.split(' ').collect();
        assert_eq!(codes.len(), 249);
        let unique: std::collections::BTreeSet<&str> = codes.iter().copied().collect();
        assert_eq!(unique.len(), 249);
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        );
        for ok in ["DE", "US", "GB", "FR", "JP", "ZW", "AD"] {
            assert!(is_country_code(ok), "{ok}");
        }
        for bad in ["de", "XX", "UK", "DEU", "", "D", "EU"] {
            assert!(!is_country_code(bad), "{bad}");
        }
    }

    #[test]
    fn a_valid_request_passes_and_each_bad_field_is_named() {
        assert_eq!(request().validate(), Ok(()));
        type Change = fn(&mut PlaceOrderRequest);
        let cases: Vec<(Change, &str)> = vec![
            (|r| r.cart_id = " ".into(), "cartId"),
            (|r| r.cart_id = "x".repeat(65), "cartId"),
            (|r| r.payment_method = String::new(), "paymentMethod"),
            (
                |r| r.shipping_address.name = String::new(),
                "shippingAddress.name",
            ),
            (
                |r| r.shipping_address.line2 = Some("a\u{7}".into()),
                "shippingAddress.line2",
            ),
            (
                |r| r.shipping_address.postal_code = String::new(),
                "shippingAddress.postalCode",
            ),
            (
                |r| r.shipping_address.country = "XX".into(),
                "shippingAddress.country",
            ),
        ];
        for (change, field) in cases {
            let mut r = request();
            change(&mut r);
            let p = r.validate().expect_err(field);
            assert_eq!((p.status, p.field.as_deref()), (422, Some(field)));
        }
    }
}
