//! Money's rules, the same wherever an amount enters Keel (the API, a place-order command from
//! another system's producer, a cart, a payment command): which currency codes are taken — the
//! active ISO 4217 currencies (List One), from the `iso_currency` crate's copy of the list — their
//! minor units, and the largest amount.
//!
//! Accepted: a code of a currency in use — `EUR`, `USD`, `JPY`, `BHD`, `CLP` … Refused:
//! - codes ISO 4217 does not assign (`ZZZ`) or that are not upper case (`eur`);
//! - the X-codes that are no money to pay with: no currency (`XXX`), testing (`XTS`), precious
//!   metals (`XAU`, `XAG`, `XPT`, `XPD`), units of account (`XDR`, `XSU`, `XUA`, `XAD`, `XBA`…);
//! - fund codes (`BOV`, `CHE`, `CHW`, `CLF`, `COU`, `MXV`, `USN`, `UYI`, `UYW`): units of
//!   account beside a country's currency, not what a shop is paid in;
//! - withdrawn codes (`HRK`, `BGN`, `SLL`, `ZWL`, `CUC`), superseded by another currency.
//!   `VES` stays accepted: the crate marks it superseded by `VED`, but ISO's List One lists
//!   both bolívar codes.
//!
//! Amounts are integers in the currency's minor unit, [`minor_units`] digits after the
//! decimal point: 2 for `EUR` (cents), 0 for `JPY` and `CLP` (whole yen and pesos), 3 for
//! `BHD`, `KWD` and `TND`. Nothing in Keel divides by 100: an `amountMinor` is stored,
//! compared and summed as the integer it is, whatever the currency's exponent.

use iso_currency::Currency;

/// The largest amount (minor units) Keel takes: 2^53 - 1, the largest integer every JSON client
/// reads exactly (RFC 8259 §6), and far from where sums of amounts overflow i64.
pub const MAX_AMOUNT_MINOR: i64 = 9_007_199_254_740_991;

/// Whether `amount_minor` is an amount Keel takes: 1 to [`MAX_AMOUNT_MINOR`] minor units.
pub fn is_amount(amount_minor: i64) -> bool {
    (1..=MAX_AMOUNT_MINOR).contains(&amount_minor)
}

/// Whether a payment can be of `amount_minor` in `currency`: [`is_amount`] and
/// [`is_currency_code`].
pub fn is_payable(amount_minor: i64, currency: &str) -> bool {
    is_amount(amount_minor) && is_currency_code(currency)
}

/// The currency of `code` when the API accepts it (see the module doc).
fn accepted(code: &str) -> Option<Currency> {
    let currency = Currency::from_code(code)?;
    let withdrawn = currency.is_superseded().is_some() && code != "VES";
    (!currency.is_special() && !currency.is_fund() && !withdrawn && currency.exponent().is_some())
        .then_some(currency)
}

/// Whether `code` is an active ISO 4217 currency code the API accepts.
pub fn is_currency_code(code: &str) -> bool {
    accepted(code).is_some()
}

/// The number of decimal digits of `code`'s minor unit (ISO 4217's exponent: 2 for EUR, 0 for
/// JPY, 3 for BHD), `None` for a code the API does not accept.
pub fn minor_units(code: &str) -> Option<u16> {
    accepted(code)?.exponent()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_currencies_are_accepted_and_everything_else_refused() {
        for ok in [
            "EUR", "USD", "GBP", "JPY", "CHF", "BHD", "CLP", "XCG", "ZWG", "SLE", "VED", "VES",
            "XAF", "XOF", "XCD", "XPF",
        ] {
            assert!(is_currency_code(ok), "{ok}");
        }
        for bad in [
            "ZZZ", "XXX", "XTS", "XAU", "XDR", "CLF", "USN", "HRK", "SLL", "eur", "EU", "EURO", "",
            "€",
        ] {
            assert!(!is_currency_code(bad), "{bad}");
        }
    }

    #[test]
    fn minor_units_follow_the_currency() {
        assert_eq!(minor_units("EUR"), Some(2));
        assert_eq!(minor_units("JPY"), Some(0));
        assert_eq!(minor_units("BHD"), Some(3));
        assert_eq!(minor_units("XXX"), None);
    }
}
