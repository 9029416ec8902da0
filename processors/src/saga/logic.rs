//! The saga's transitions as one pure function: [`decide`]`(state, input, now, timeouts) →
//! (state, effects)`. No I/O, no clock: the topology (`topology.rs`) reads the state, applies the
//! effects (commands, decisions, deadlines) and writes the state back, all in the task's
//! transaction. The full table is in `docs/saga.md`.
//!
//! Rules that hold for every input sequence (property-tested in `tests.rs`):
//! - a duplicate (same command or event id) changes nothing and emits nothing;
//! - a command or event whose key is not its order id (or whose order id breaks the id rule),
//!   and a place-order under a new command id for an order id that has a saga, are
//!   [`Refusal`]s: dead-lettered, nothing changes;
//! - an event for an order without a saga, or for a SKU the order does not have, is
//!   [`Ignored`] (valid, someone else's: no state, no effects, counted), never refused; only
//!   undecodable records and commands the saga cannot carry out are dead-lettered;
//! - a reply that answers a saga command not sent yet (causation `<order id>/c<n>` with `n`
//!   above [`Saga::commands_issued`]), an outcome of the saga's payment before it asked for
//!   the payment, or a release of a line still waiting for its reservation's answer, is
//!   [`Ignored::Early`]: nothing changes, the id is not remembered, and the
//!   topology keeps it until the saga has sent that command (a replay reads the input topics
//!   in fetch order, so replies can come before their commands);
//! - a terminal step (`Confirmed`, `Cancelled`, `Rejected`) never changes; late replies to a
//!   terminal saga only compensate (a late hold is released, a late authorization voided);
//! - every non-terminal step has a deadline, so no saga waits forever;
//! - every line held and every authorization has a path to confirmation or compensation;
//! - with [`Timeouts::wait_for_sale`] (`[inventory].oversell = "prevent"`) an authorized order
//!   is `CONFIRMED` only once inventory answered `SOLD`/`OVERSOLD` for every line; a
//!   `SALE_REFUSED` cancels it (`OVERSELL_PREVENTED`), voiding the payment and giving back what
//!   was sold.

use keel_avro::ids::{ID_RULE, is_valid_id, shown};
use keel_avro::records::{
    AuthorizePayment, CapturePayment, CartCheckStatus, CartChecked, ConfirmReservation,
    CreatePaymentIntent, InventoryCommandBody, InventoryReleased, InventoryReserved,
    OrderDecisionStatus, OrderLine, PaymentAuthorized, PaymentCommandBody, PaymentFailed,
    PaymentFailureReason, PlaceOrder, ReleaseReason, ReleaseStock, ReservationStatus, ReserveStock,
    VoidPayment,
};

use serde::{Deserialize, Serialize};

use super::state::{LineState, PaymentState, Reason, Saga, Step};
use crate::command_key::{KeyProblem, check_key};
use crate::topics;

/// How long each step may wait (ms). Every timeout is configuration, so tests run the same
/// paths in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the reserve commands until every line is answered.
    pub inventory_ms: i64,
    /// From the authorize command until the payment's outcome; longer than the payment
    /// service's PSP timeout (30 s by default), so a PSP timeout arrives as `PSP_TIMEOUT` first.
    pub payment_ms: i64,
    /// `Some`: every order first waits this long for the carts processor's answer
    /// (`[carts].source = "cdc"`; longer than `[saga].cart_wait_ms`, so `CART_NOT_FOUND` arrives
    /// first). `None`: the command's own lines are trusted (`[carts].source = "api"`).
    pub cart_ms: Option<i64>,
    /// `true` (`[inventory].oversell = "prevent"`): after the authorization, wait for
    /// inventory's answer to every confirm command (deadline: `inventory_ms`) before capturing
    /// and deciding `CONFIRMED`. `false` (`"allow"`): confirm, capture and decide at once.
    pub wait_for_sale: bool,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            inventory_ms: 30_000,
            payment_ms: 60_000,
            cart_ms: None,
            wait_for_sale: false,
        }
    }
}

/// What the saga reacts to. Serializable: a reply read ahead of its command is kept in the
/// store `saga-early` until the saga sends that command ([`Ignored::Early`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    Place {
        command_id: String,
        /// The order id inside the command; the record's key must be the same.
        order_id: String,
        place: PlaceOrder,
    },
    Cancel {
        command_id: String,
        /// The order id inside the command; the record's key must be the same.
        order_id: String,
        reason: String,
    },
    Reserved(InventoryReserved),
    Released(InventoryReleased),
    Authorized(PaymentAuthorized),
    PaymentFailed(PaymentFailed),
    /// The carts processor's answer to the order's cart check.
    CartChecked(CartChecked),
    /// The current step's deadline passed (a timer fired).
    DeadlinePassed,
}

impl Input {
    /// The id duplicates are recognised by (`None` for timers).
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Place { command_id, .. } | Self::Cancel { command_id, .. } => Some(command_id),
            Self::Reserved(e) => Some(&e.event_id),
            Self::Released(e) => Some(&e.event_id),
            Self::Authorized(e) => Some(&e.event_id),
            Self::PaymentFailed(e) => Some(&e.event_id),
            Self::CartChecked(e) => Some(&e.event_id),
            Self::DeadlinePassed => None,
        }
    }

    /// The order id inside the command or event (`None` for a timer): its record's key must be
    /// the same ([`Refusal::Key`]).
    pub fn order_id(&self) -> Option<&str> {
        match self {
            Self::Place { order_id, .. } | Self::Cancel { order_id, .. } => Some(order_id),
            Self::Reserved(e) => Some(&e.order_id),
            Self::Released(e) => Some(&e.order_id),
            Self::Authorized(e) => Some(&e.order_id),
            Self::PaymentFailed(e) => Some(&e.order_id),
            Self::CartChecked(e) => Some(&e.order_id),
            Self::DeadlinePassed => None,
        }
    }

    /// The causation id of a reply (an event on one of the saga's reply topics): the id of the
    /// command it answers. `None` for commands and timers.
    pub fn causation(&self) -> Option<&str> {
        match self {
            Self::Reserved(e) => Some(&e.causation_id),
            Self::Released(e) => Some(&e.causation_id),
            Self::Authorized(e) => Some(&e.causation_id),
            Self::PaymentFailed(e) => Some(&e.causation_id),
            Self::CartChecked(e) => Some(&e.causation_id),
            Self::Place { .. } | Self::Cancel { .. } | Self::DeadlinePassed => None,
        }
    }

    /// Whether this reply answers something the saga of `order_id` does: one of its commands
    /// (causation `<order id>/c<n>`, the saga's command ids), the lapse of one of its holds
    /// (inventory's expiry release, causation `expiry:<sku>/<order id>`), or the outcome of its
    /// payment (`payment_id` = [`payment_id_of`] the order: an outcome settled by a PSP
    /// callback is caused by the callback, not by the saga's authorize command). Such a reply
    /// read before there is a saga, or before the saga sent the command ([`Ignored::Early`]),
    /// is kept for it; any other ignored event is dropped.
    pub fn answers_the_saga_of(&self, order_id: &str) -> bool {
        let Some(causation) = self.causation() else {
            return false;
        };
        command_number(causation, order_id).is_some()
            || self.payment_id() == Some(payment_id_of(order_id).as_str())
            || matches!(self, Self::Released(e) if e.reason == ReleaseReason::HoldExpired
                && causation.strip_prefix("expiry:").and_then(|c| c.strip_suffix(order_id))
                    .is_some_and(|sku| sku.ends_with('/')))
    }

    /// The payment id of a payment outcome.
    fn payment_id(&self) -> Option<&str> {
        match self {
            Self::Authorized(e) => Some(&e.payment_id),
            Self::PaymentFailed(e) => Some(&e.payment_id),
            _ => None,
        }
    }

    /// The unprefixed topic the input is read from (`payment.authorized.v1`, …; `deadline` for
    /// a timer): the `event` label of `keel_saga_events_ignored_total`.
    pub fn event(&self) -> &'static str {
        match self {
            Self::Place { .. } | Self::Cancel { .. } => topics::ORDER_COMMANDS,
            Self::Reserved(_) => topics::INVENTORY_RESERVED,
            Self::Released(_) => topics::INVENTORY_RELEASED,
            Self::Authorized(_) => topics::PAYMENT_AUTHORIZED,
            Self::PaymentFailed(_) => topics::PAYMENT_FAILED,
            Self::CartChecked(_) => topics::CART_CHECKED,
            Self::DeadlinePassed => "deadline",
        }
    }
}

/// Why a valid input was read and left alone: no state, no outputs, no dead letter; the
/// topology counts it in `keel_saga_events_ignored_total{event, reason}`.
///
/// The inventory and payment event topics are shared, public topics: besides the saga's own
/// reservations and payments they carry those made straight through `POST /inventory/reserve`
/// and `POST /payments` (and by other systems' producers), keyed by an order id the saga may
/// not orchestrate. Such an event is valid and addressed to someone else, so it is not the
/// saga's to refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// An event for an order without a saga: a reservation or payment made outside a
    /// checkout, or a late reply after `[saga].retention_ms` deleted the finished saga. Never
    /// an early reply: the saga sends the commands these events answer, so it exists first.
    NoSaga,
    /// A reservation reply or release for a SKU the order does not have: a reservation made
    /// outside the checkout under the same order id. Nothing of the saga's is held by it.
    NotInOrder,
    /// A reply read ahead of its cause: it answers a command the saga has not sent (yet), or
    /// releases a hold whose reservation the saga has not seen answered. A replay reads the
    /// saga's input topics in the order they are fetched, not in the order they were written
    /// (`keel reset`, or a new `[streams].application_id` on the same topics), so an order's
    /// replies can come before the commands the replay is about to send again. The topology
    /// keeps the reply (store `saga-early`) and applies it once the saga has sent that command;
    /// nothing of the saga changes until then.
    Early,
}

impl Ignored {
    /// Every reason, for registering the counter's series at start.
    pub const ALL: [Self; 3] = [Self::NoSaga, Self::NotInOrder, Self::Early];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoSaga => "no_saga",
            Self::NotInOrder => "not_in_order",
            Self::Early => "early",
        }
    }

    /// The inputs (by [`Input::event`]) this reason can apply to.
    pub fn events(self) -> &'static [&'static str] {
        match self {
            Self::NoSaga => &[
                topics::INVENTORY_RESERVED,
                topics::INVENTORY_RELEASED,
                topics::PAYMENT_AUTHORIZED,
                topics::PAYMENT_FAILED,
                topics::CART_CHECKED,
            ],
            Self::NotInOrder => &[topics::INVENTORY_RESERVED, topics::INVENTORY_RELEASED],
            Self::Early => &[
                topics::INVENTORY_RESERVED,
                topics::INVENTORY_RELEASED,
                topics::PAYMENT_AUTHORIZED,
                topics::PAYMENT_FAILED,
                topics::CART_CHECKED,
            ],
        }
    }
}

/// Something the topology must do because of a decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A command on `inventory.commands.v1` for `sku`.
    Inventory {
        sku: String,
        command: InventoryCommandBody,
    },
    /// A command on `payments.commands.v1`.
    Payment(PaymentCommandBody),
    /// Ask the carts processor to check the order's cart: the order's place-order command,
    /// re-keyed by cart id.
    CheckCart,
    /// The order was cancelled after its cart check was asked (`[carts].source = "cdc"`):
    /// tell the carts processor, so the order gives the cart back (a cancel command re-keyed
    /// by cart id, after the check on the same partition).
    ReleaseCart,
    /// A decision on `order.decisions.v1`.
    Decide {
        sequence: i32,
        status: OrderDecisionStatus,
        from: Option<OrderDecisionStatus>,
        reason: Option<Reason>,
        detail: Option<String>,
    },
    /// (Re)arm the step's deadline at this wall-clock time (epoch ms).
    SetDeadline(i64),
    ClearDeadline,
}

impl Effect {
    /// Whether the effect is a command the saga sends (and numbers: `<order id>/c<n>`).
    pub fn is_command(&self) -> bool {
        matches!(
            self,
            Self::Inventory { .. } | Self::Payment(_) | Self::CheckCart | Self::ReleaseCart
        )
    }
}

/// Why an input cannot be applied at all: the record's fault, so it goes to the dead-letter
/// topic with this text (nothing is applied). Only commands are refused: they are addressed to
/// the saga, so one it cannot carry out is a producer's mistake someone must see. Events for
/// orders that are not the saga's are [`Ignored`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The command's key is not its order id (an empty key included), or that id breaks the id
    /// rule ([`keel_avro::ids`]): checked before anything else, so such a command never starts
    /// or touches a saga.
    #[error(transparent)]
    Key(#[from] KeyProblem),
    /// A place-order command for an order id that has a saga, under another command id: a
    /// second order that reuses an order id (another cart, other lines), or a producer that
    /// retried with a fresh command id. The order stays as it is; a retry of the same command
    /// (same command id) is a duplicate and changes nothing without a refusal.
    #[error(
        "order {} exists already ({status:?}, cart {}, placed by another command); place-order \
         command {} (cart {}) for the same order id is not applied: a new order needs a new order \
         id, and a producer's retry must keep its command id",
        shown(.order_id),
        shown(.cart_id),
        shown(.command_id),
        shown(.new_cart_id)
    )]
    OrderExists {
        order_id: String,
        status: OrderDecisionStatus,
        cart_id: String,
        command_id: String,
        new_cart_id: String,
    },
    /// A cancel for an order id with no saga (the API answers 404 before writing one).
    #[error("no saga for order {0:?}: a cancel must follow its place-order command")]
    UnknownOrder(String),
    #[error("order {order_id:?} is {status:?}; it can no longer be cancelled")]
    NotCancellable {
        order_id: String,
        status: OrderDecisionStatus,
    },
}

/// The saga after `input`, and what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub saga: Option<Saga>,
    pub effects: Vec<Effect>,
    /// `Some`: the input was valid but not the saga's; `saga` is the state as it was and
    /// `effects` is empty.
    pub ignored: Option<Ignored>,
}

impl Outcome {
    fn unchanged(saga: Option<Saga>) -> Self {
        Self {
            saga,
            effects: Vec::new(),
            ignored: None,
        }
    }

    /// `saga` after an applied input, with its effects; every command among them is counted in
    /// [`Saga::commands_issued`], so the topology numbers them `<order id>/c<n>` from the count
    /// before, in the order of `effects`.
    fn applied(mut saga: Saga, effects: Vec<Effect>) -> Self {
        let commands = effects.iter().filter(|e| e.is_command()).count();
        saga.commands_issued = saga
            .commands_issued
            .saturating_add(u32::try_from(commands).unwrap_or(u32::MAX));
        Self {
            saga: Some(saga),
            effects,
            ignored: None,
        }
    }

    fn ignored(saga: Option<Saga>, why: Ignored) -> Self {
        Self {
            saga,
            effects: Vec::new(),
            ignored: Some(why),
        }
    }
}

/// Applies `input` to the saga `state` (None: no saga for this order yet) at wall-clock `now`.
/// `order_id` is the record's key, which [`Input::Place`] and [`Input::Cancel`] must carry as
/// their own order id ([`Refusal::Key`]).
pub fn decide(
    state: Option<Saga>,
    input: Input,
    order_id: &str,
    now: i64,
    timeouts: &Timeouts,
) -> Result<Outcome, Refusal> {
    // A command or event is about the order its key names only if the key is its order id:
    // checked before the state is looked at, so a mis-keyed command neither starts a saga nor
    // acts on another order's, and a mis-keyed reply is not taken for the other order's.
    if let Some(id) = input.order_id() {
        check_key("order_id", order_id, id)?;
    }
    let Some(mut saga) = state else {
        return start(input, order_id, now, timeouts);
    };
    // Checked before the id is remembered: an ignored event leaves the saga as it was.
    if let Input::Reserved(InventoryReserved { sku, .. })
    | Input::Released(InventoryReleased { sku, .. }) = &input
        && !saga.line_states.contains_key(sku)
    {
        return Ok(Outcome::ignored(Some(saga), Ignored::NotInOrder));
    }
    if is_early(&saga, &input) {
        return Ok(Outcome::ignored(Some(saga), Ignored::Early));
    }
    if let Some(id) = input.id() {
        if saga.seen.contains(id) {
            return Ok(Outcome::unchanged(Some(saga)));
        }
        saga.seen.insert(id.to_owned());
    }
    let mut fx = Vec::new();
    match input {
        // Another place-order (not a duplicate: its command id is new) for an existing order
        // id: a conflict the producer must see. The saga stays as it was (a refusal writes
        // nothing, so not even the command id is remembered).
        Input::Place {
            command_id, place, ..
        } => {
            return Err(Refusal::OrderExists {
                order_id: saga.order_id,
                status: saga.step.status(),
                cart_id: saga.cart_id,
                command_id,
                new_cart_id: place.cart_id,
            });
        }
        Input::Cancel { reason, .. } => match saga.step {
            Step::AwaitingCart
            | Step::AwaitingInventory
            | Step::AwaitingPayment
            | Step::AwaitingConfirmation => {
                cancel(&mut saga, Reason::CustomerCancelled, Some(reason), &mut fx);
            }
            // Already where the cancel wants it (a client's retried cancel, or a cancel that
            // crossed a failure): nothing to do, and nothing to complain about.
            Step::Cancelled | Step::Rejected => {}
            Step::Confirmed => {
                return Err(Refusal::NotCancellable {
                    order_id: saga.order_id,
                    status: saga.step.status(),
                });
            }
        },
        Input::Reserved(reply) => on_reserved(&mut saga, &reply, now, timeouts, &mut fx),
        Input::Released(released) => on_released(&mut saga, &released, &mut fx),
        Input::CartChecked(answer) => on_cart_checked(&mut saga, answer, now, timeouts, &mut fx),
        Input::Authorized(auth) => match saga.step {
            // The payment id is the order's (`pay-<order id>`), so an authorization of another
            // amount is of a payment someone else opened under it (`POST /payments` for this
            // order id): confirming would capture that amount for the order. Void it, give the
            // holds back.
            Step::AwaitingPayment if auth.amount != saga.total => {
                let detail = format!(
                    "payment {} was authorized for {} {}, the order's total is {} {}",
                    saga.payment_id,
                    auth.amount.amount_minor,
                    auth.amount.currency,
                    saga.total.amount_minor,
                    saga.total.currency
                );
                cancel(&mut saga, Reason::PaymentMismatch, Some(detail), &mut fx);
            }
            Step::AwaitingPayment if timeouts.wait_for_sale => {
                await_sale(&mut saga, &auth, now, timeouts, &mut fx);
            }
            Step::AwaitingPayment => {
                saga.payment = PaymentState::CaptureRequested {
                    psp_reference: auth.psp_reference.clone(),
                };
                for line in saga.lines.clone() {
                    saga.line_states
                        .insert(line.sku.clone(), LineState::Confirmed);
                    fx.push(Effect::Inventory {
                        sku: line.sku,
                        command: InventoryCommandBody::Confirm(ConfirmReservation {
                            order_id: saga.order_id.clone(),
                        }),
                    });
                }
                fx.push(Effect::Payment(PaymentCommandBody::Capture(
                    CapturePayment {
                        amount: auth.amount.clone(),
                    },
                )));
                transition(&mut saga, Step::Confirmed, None, None, &mut fx);
            }
            // Confirmed already, or confirming (a duplicate under another event id): nothing
            // more to do.
            Step::Confirmed | Step::AwaitingConfirmation => {}
            // An authorization nobody waits for any more: give the money back.
            Step::AwaitingCart | Step::AwaitingInventory | Step::Cancelled | Step::Rejected => {
                saga.payment = PaymentState::VoidRequested;
                fx.push(Effect::Payment(PaymentCommandBody::Void(VoidPayment {
                    reason: format!("authorization arrived while the order was {:?}", saga.step),
                })));
            }
        },
        Input::PaymentFailed(failed) => {
            if saga.step == Step::AwaitingPayment {
                saga.payment = PaymentState::Failed;
                let reason = match failed.reason {
                    PaymentFailureReason::Declined => Reason::PaymentDeclined,
                    PaymentFailureReason::Timeout => Reason::PspTimeout,
                    PaymentFailureReason::PspError => Reason::PspError,
                };
                cancel(&mut saga, reason, failed.detail.clone(), &mut fx);
            }
        }
        Input::DeadlinePassed => match saga.step {
            Step::AwaitingCart => {
                cancel(
                    &mut saga,
                    Reason::CartTimeout,
                    Some("no answer to the cart check before the deadline".to_owned()),
                    &mut fx,
                );
            }
            Step::AwaitingInventory => {
                let waiting = lines_in(&saga, |s| matches!(s, LineState::Requested));
                let detail = format!("no answer for {}", waiting.join(", "));
                cancel(&mut saga, Reason::InventoryTimeout, Some(detail), &mut fx);
            }
            Step::AwaitingPayment => {
                cancel(
                    &mut saga,
                    Reason::PaymentTimeout,
                    Some("no payment outcome before the deadline".to_owned()),
                    &mut fx,
                );
            }
            Step::AwaitingConfirmation => {
                let waiting = lines_in(&saga, |s| matches!(s, LineState::Confirming));
                let detail = format!("no answer to the confirm of {}", waiting.join(", "));
                cancel(&mut saga, Reason::InventoryTimeout, Some(detail), &mut fx);
            }
            Step::Confirmed | Step::Cancelled | Step::Rejected => {}
        },
    }
    // Cancelled now, with a cart check asked at the start: the carts processor may hold (or
    // still be about to take) the cart for this order; give it back so the customer can order
    // the cart again. Once: a cancelled saga never cancels again.
    if timeouts.cart_ms.is_some()
        && fx.iter().any(|e| {
            matches!(
                e,
                Effect::Decide {
                    status: OrderDecisionStatus::Cancelled,
                    ..
                }
            )
        })
    {
        fx.push(Effect::ReleaseCart);
    }
    saga.updated_at = now;
    Ok(Outcome::applied(saga, fx))
}

/// The `n` of the saga command id `<order_id>/c<n>` ([`Saga::commands_issued`] counts them).
fn command_number(command_id: &str, order_id: &str) -> Option<u32> {
    let n = command_id.strip_prefix(order_id)?.strip_prefix("/c")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Whether `input` is a reply the saga cannot have caused yet ([`Ignored::Early`]): an answer
/// to a command number it has not issued, an outcome of its payment before it asked for the
/// payment, or a release of a line still waiting for its reservation's answer.
fn is_early(saga: &Saga, input: &Input) -> bool {
    if input
        .causation()
        .and_then(|c| command_number(c, &saga.order_id))
        .is_some_and(|n| n > saga.commands_issued)
    {
        return true;
    }
    if input.payment_id() == Some(saga.payment_id.as_str()) {
        return saga.payment == PaymentState::NotRequested;
    }
    matches!(input, Input::Released(e)
        if saga.line_states.get(&e.sku) == Some(&LineState::Requested))
}

/// The saga's payment id for `order_id`: `pay-<order id>` (no `/`, so it is one URL path
/// segment).
pub fn payment_id_of(order_id: &str) -> String {
    format!("pay-{order_id}")
}

fn start(input: Input, order_id: &str, now: i64, timeouts: &Timeouts) -> Result<Outcome, Refusal> {
    let (command_id, place) = match input {
        Input::Place {
            command_id, place, ..
        } => (command_id, place),
        // A command to the saga that it cannot carry out: the producer's mistake (the API
        // answers 404 instead of writing it), dead-lettered so that someone sees why. Also a
        // cancel after `[saga].retention_ms` deleted the finished saga: too late either way.
        Input::Cancel { .. } => return Err(Refusal::UnknownOrder(order_id.to_owned())),
        // Events on the shared inventory and payment topics for an order the saga does not
        // orchestrate (a reservation or payment made outside a checkout), late ones after the
        // retention deleted the saga, or — in a replay, which reads the input topics in fetch
        // order — replies read before the place-order command that caused them (the topology
        // keeps those that answer a saga command, [`Input::answers_the_saga_of`]). Valid
        // records: ignored, counted.
        Input::Reserved(_)
        | Input::Released(_)
        | Input::Authorized(_)
        | Input::PaymentFailed(_)
        | Input::CartChecked(_) => return Ok(Outcome::ignored(None, Ignored::NoSaga)),
        // A timer without a saga (cannot be scheduled without one): nothing to do.
        Input::DeadlinePassed => return Ok(Outcome::unchanged(None)),
    };
    let mut saga = Saga {
        order_id: order_id.to_owned(),
        customer_id: place.customer_id.clone(),
        cart_id: place.cart_id.clone(),
        payment_method: place.payment_method.clone(),
        lines: place.lines.clone(),
        total: place.total.clone(),
        shipping_address: place.shipping_address.clone(),
        step: Step::AwaitingInventory,
        line_states: Default::default(),
        payment: PaymentState::NotRequested,
        payment_id: payment_id_of(order_id),
        sequence: 0,
        commands_issued: 0,
        seen: [command_id].into(),
        deadline: None,
        reason: None,
        detail: None,
        started_at: now,
        updated_at: now,
    };
    let mut fx = Vec::new();
    let valid = match timeouts.cart_ms {
        // The cart supplies the lines: a command may leave them out.
        Some(_) if place.lines.is_empty() => validate_header(&place),
        _ => validate(&place),
    };
    if let Err(problem) = valid {
        saga.step = Step::Rejected;
        saga.reason = Some(Reason::InvalidOrder);
        saga.detail = Some(problem.clone());
        saga.sequence = 1;
        fx.push(Effect::Decide {
            sequence: 1,
            status: OrderDecisionStatus::Rejected,
            from: None,
            reason: Some(Reason::InvalidOrder),
            detail: Some(problem),
        });
        return Ok(Outcome::applied(saga, fx));
    }
    saga.sequence = 1;
    fx.push(Effect::Decide {
        sequence: 1,
        status: OrderDecisionStatus::Pending,
        from: None,
        reason: None,
        detail: None,
    });
    match timeouts.cart_ms {
        Some(cart_ms) => {
            saga.step = Step::AwaitingCart;
            fx.push(Effect::CheckCart);
            let due = now.saturating_add(cart_ms);
            saga.deadline = Some(due);
            fx.push(Effect::SetDeadline(due));
        }
        None => reserve_lines(&mut saga, now, timeouts, &mut fx),
    }
    Ok(Outcome::applied(saga, fx))
}

/// Sends a reserve command per line and waits for inventory.
fn reserve_lines(saga: &mut Saga, now: i64, timeouts: &Timeouts, fx: &mut Vec<Effect>) {
    saga.step = Step::AwaitingInventory;
    for line in &saga.lines {
        saga.line_states
            .insert(line.sku.clone(), LineState::Requested);
        fx.push(Effect::Inventory {
            sku: line.sku.clone(),
            command: InventoryCommandBody::Reserve(ReserveStock {
                order_id: saga.order_id.clone(),
                quantity: line.quantity,
                warehouse: None,
                hold_ttl_ms: None,
            }),
        });
    }
    let due = now.saturating_add(timeouts.inventory_ms);
    saga.deadline = Some(due);
    fx.push(Effect::SetDeadline(due));
}

/// The carts processor answered: reserve the cart's lines, or cancel with its reason.
fn on_cart_checked(
    saga: &mut Saga,
    answer: CartChecked,
    now: i64,
    timeouts: &Timeouts,
    fx: &mut Vec<Effect>,
) {
    if saga.step != Step::AwaitingCart {
        // Late (after a cancel or the deadline) or not asked for: nothing of ours depends on it.
        return;
    }
    let reason = match answer.status {
        CartCheckStatus::Ok => None,
        CartCheckStatus::CartNotFound => Some(Reason::CartNotFound),
        CartCheckStatus::CartEmpty => Some(Reason::CartEmpty),
        CartCheckStatus::CartAlreadyOrdered => Some(Reason::CartAlreadyOrdered),
        CartCheckStatus::CurrencyMismatch => Some(Reason::CurrencyMismatch),
    };
    if let Some(reason) = reason {
        cancel(saga, reason, answer.detail, fx);
        return;
    }
    if answer.lines.is_empty() {
        let detail = format!("cart {} has no items", answer.cart_id);
        cancel(saga, Reason::CartEmpty, Some(detail), fx);
        return;
    }
    if !saga.lines.is_empty()
        && let Some(difference) = line_difference(&saga.lines, &answer.lines)
    {
        cancel(saga, Reason::CartMismatch, Some(difference), fx);
        return;
    }
    if saga.lines.is_empty() {
        let place = PlaceOrder {
            customer_id: saga.customer_id.clone(),
            cart_id: saga.cart_id.clone(),
            lines: answer.lines.clone(),
            total: answer.total.clone(),
            payment_method: saga.payment_method.clone(),
            shipping_address: None,
        };
        if let Err(problem) = validate(&place) {
            cancel(
                saga,
                Reason::CartMismatch,
                Some(format!("cart: {problem}")),
                fx,
            );
            return;
        }
    }
    saga.lines = answer.lines;
    saga.total = answer.total;
    reserve_lines(saga, now, timeouts, fx);
}

/// The first difference between the command's lines and the cart's, naming the line.
fn line_difference(ordered: &[OrderLine], cart: &[OrderLine]) -> Option<String> {
    for (i, line) in ordered.iter().enumerate() {
        let Some(in_cart) = cart.iter().find(|c| c.sku == line.sku) else {
            return Some(format!("lines[{i}] {}: not in the cart", line.sku));
        };
        if in_cart.quantity != line.quantity {
            return Some(format!(
                "lines[{i}] {}: quantity {} in the order, {} in the cart",
                line.sku, line.quantity, in_cart.quantity
            ));
        }
        if in_cart.unit_price != line.unit_price {
            return Some(format!(
                "lines[{i}] {}: unit price {} {} in the order, {} {} in the cart",
                line.sku,
                line.unit_price.amount_minor,
                line.unit_price.currency,
                in_cart.unit_price.amount_minor,
                in_cart.unit_price.currency
            ));
        }
    }
    cart.iter()
        .find(|c| !ordered.iter().any(|l| l.sku == c.sku))
        .map(|c| format!("{}: in the cart, not in the order", c.sku))
}

/// The rules of a place-order command apart from its lines (for commands that leave the lines
/// to the cart).
pub fn validate_header(place: &PlaceOrder) -> Result<(), String> {
    if place.cart_id.trim().is_empty() {
        return Err("cart_id: must not be empty".to_owned());
    }
    if place.payment_method.trim().is_empty() {
        return Err("payment_method: must not be empty".to_owned());
    }
    let currency = &place.total.currency;
    if !crate::money::is_currency_code(currency) {
        return Err(format!(
            "total.currency: {currency:?} is not the code of a currency in use (ISO 4217 List \
             One: EUR, USD, JPY ...; not XXX, test or fund codes)"
        ));
    }
    Ok(())
}

/// The rules a place-order command must meet, whoever wrote it (the API or another system's
/// producer). The error names the field and says why.
pub fn validate(place: &PlaceOrder) -> Result<(), String> {
    const MAX_LINES: usize = 100;
    const MAX_QUANTITY: i32 = 1_000;
    if place.lines.is_empty() {
        return Err("lines: an order needs at least one line".to_owned());
    }
    if place.lines.len() > MAX_LINES {
        return Err(format!(
            "lines: at most {MAX_LINES} lines, got {}",
            place.lines.len()
        ));
    }
    validate_header(place)?;
    let currency = &place.total.currency;
    let mut skus = std::collections::BTreeSet::new();
    let mut sum: i64 = 0;
    for (i, line) in place.lines.iter().enumerate() {
        // The API's rule for SKUs: inventory dead-letters a command for any other SKU.
        if !is_valid_id(&line.sku) {
            return Err(format!(
                "lines[{i}].sku: {} is not a SKU: a SKU is {ID_RULE}",
                shown(&line.sku)
            ));
        }
        if !skus.insert(line.sku.as_str()) {
            return Err(format!("lines[{i}].sku: {:?} appears twice", line.sku));
        }
        if !(1..=MAX_QUANTITY).contains(&line.quantity) {
            return Err(format!(
                "lines[{i}].quantity: {} is not between 1 and {MAX_QUANTITY}",
                line.quantity
            ));
        }
        if line.unit_price.amount_minor < 0 {
            return Err(format!("lines[{i}].unit_price: must not be negative"));
        }
        if &line.unit_price.currency != currency {
            return Err(format!(
                "lines[{i}].unit_price.currency: {} differs from the total's {currency}",
                line.unit_price.currency
            ));
        }
        let amount = line
            .unit_price
            .amount_minor
            .checked_mul(i64::from(line.quantity))
            .and_then(|a| sum.checked_add(a));
        sum = amount.ok_or_else(|| format!("lines[{i}]: the amount overflows"))?;
    }
    if sum != place.total.amount_minor {
        return Err(format!(
            "total.amount_minor: {} is not the sum of the lines ({sum})",
            place.total.amount_minor
        ));
    }
    // The payment service authorizes amounts from 1 to MAX_AMOUNT_MINOR (the API's rule for
    // every amount): an order outside them could never be paid.
    if !crate::money::is_amount(sum) {
        return Err(format!(
            "total.amount_minor: {sum} is not between 1 and {} (an order is paid for, in \
             amounts every JSON client reads exactly)",
            crate::money::MAX_AMOUNT_MINOR
        ));
    }
    Ok(())
}

fn on_reserved(
    saga: &mut Saga,
    reply: &InventoryReserved,
    now: i64,
    timeouts: &Timeouts,
    fx: &mut Vec<Effect>,
) {
    let Some(state) = saga.line_states.get(&reply.sku).cloned() else {
        // A reply for a SKU this order does not have: nothing of ours to hold or release.
        return;
    };
    if matches!(
        reply.status,
        ReservationStatus::Sold | ReservationStatus::Oversold | ReservationStatus::SaleRefused
    ) {
        on_confirm_answer(saga, reply, &state, fx);
        return;
    }
    let held = reply.status == ReservationStatus::Held;
    match saga.step {
        Step::AwaitingInventory if state == LineState::Requested => {
            if held {
                saga.line_states.insert(
                    reply.sku.clone(),
                    LineState::Held {
                        expires_at: reply.expires_at,
                    },
                );
                let all_held = saga
                    .line_states
                    .values()
                    .all(|s| matches!(s, LineState::Held { .. }));
                if all_held {
                    saga.payment = PaymentState::Requested;
                    fx.push(Effect::Payment(PaymentCommandBody::CreateIntent(
                        CreatePaymentIntent {
                            customer_id: saga.customer_id.clone(),
                            amount: saga.total.clone(),
                            payment_method: saga.payment_method.clone(),
                        },
                    )));
                    fx.push(Effect::Payment(PaymentCommandBody::Authorize(
                        AuthorizePayment {
                            amount: saga.total.clone(),
                        },
                    )));
                    saga.step = Step::AwaitingPayment;
                    let due = now.saturating_add(timeouts.payment_ms);
                    saga.deadline = Some(due);
                    fx.push(Effect::SetDeadline(due));
                }
            } else {
                saga.line_states.insert(
                    reply.sku.clone(),
                    LineState::Short {
                        available: reply.available,
                    },
                );
                let wanted = saga.quantity_of(&reply.sku).unwrap_or(reply.quantity);
                let detail = format!(
                    "{}: {} wanted, {} available",
                    reply.sku, wanted, reply.available
                );
                cancel(saga, Reason::InsufficientStock, Some(detail), fx);
            }
        }
        // A hold that nobody needs any more (the order was cancelled, or the line was already
        // given up): give it back.
        _ if held
            && !matches!(
                state,
                LineState::Held { .. } | LineState::Confirming | LineState::Confirmed
            ) =>
        {
            saga.line_states
                .insert(reply.sku.clone(), LineState::Released);
            fx.push(release(
                &saga.order_id,
                &reply.sku,
                ReleaseReason::Compensation,
            ));
        }
        _ => {}
    }
}

fn on_released(saga: &mut Saga, released: &InventoryReleased, fx: &mut Vec<Effect>) {
    let Some(state) = saga.line_states.get(&released.sku).cloned() else {
        return;
    };
    if !matches!(state, LineState::Held { .. }) {
        return;
    }
    if released.reason != ReleaseReason::HoldExpired {
        // The saga marks a line released before it sends the release: this one came from
        // elsewhere (`POST /inventory/release` for this order id, another system's command).
        // The order cannot be sold whole any more.
        saga.line_states
            .insert(released.sku.clone(), LineState::Released);
        if matches!(saga.step, Step::AwaitingInventory | Step::AwaitingPayment) {
            let detail = format!(
                "{}: its hold was released ({:?}) by a command the saga did not send",
                released.sku, released.reason
            );
            cancel(saga, Reason::HoldReleased, Some(detail), fx);
        }
        return;
    }
    saga.line_states
        .insert(released.sku.clone(), LineState::Expired);
    // Waiting for other lines while one already lapsed: the order cannot be held whole.
    // Waiting for the payment: go on; inventory re-checks at confirm and reports an oversell
    // (`[inventory].oversell`), which is the behaviour the oversell scenario reproduces.
    if saga.step == Step::AwaitingInventory {
        let detail = format!(
            "{}: the hold lapsed before the order was held whole",
            released.sku
        );
        cancel(saga, Reason::HoldExpired, Some(detail), fx);
    }
}

/// `wait_for_sale`: the payment is authorized; ask inventory to confirm every line (held or
/// lapsed: inventory decides) and wait for its answers before capturing.
fn await_sale(
    saga: &mut Saga,
    auth: &PaymentAuthorized,
    now: i64,
    timeouts: &Timeouts,
    fx: &mut Vec<Effect>,
) {
    saga.payment = PaymentState::Authorized {
        psp_reference: auth.psp_reference.clone(),
    };
    for line in saga.lines.clone() {
        saga.line_states
            .insert(line.sku.clone(), LineState::Confirming);
        fx.push(Effect::Inventory {
            sku: line.sku,
            command: InventoryCommandBody::Confirm(ConfirmReservation {
                order_id: saga.order_id.clone(),
            }),
        });
    }
    saga.step = Step::AwaitingConfirmation;
    let due = now.saturating_add(timeouts.inventory_ms);
    saga.deadline = Some(due);
    fx.push(Effect::SetDeadline(due));
}

/// Inventory answered a confirm command (`SOLD`, `OVERSOLD`, `SALE_REFUSED`). Only a saga that
/// waits for the sale acts on it; otherwise the order was already decided.
fn on_confirm_answer(
    saga: &mut Saga,
    reply: &InventoryReserved,
    state: &LineState,
    fx: &mut Vec<Effect>,
) {
    if saga.step != Step::AwaitingConfirmation || *state != LineState::Confirming {
        return;
    }
    if reply.status == ReservationStatus::SaleRefused {
        saga.line_states.insert(
            reply.sku.clone(),
            LineState::Short {
                available: reply.available,
            },
        );
        let detail = format!(
            "{}: the hold lapsed while the payment was under way and its {} unit(s) went to \
             another order; inventory refused the late sale ([inventory].oversell = prevent)",
            reply.sku, reply.quantity
        );
        cancel(saga, Reason::OversellPrevented, Some(detail), fx);
        return;
    }
    saga.line_states
        .insert(reply.sku.clone(), LineState::Confirmed);
    if saga
        .line_states
        .values()
        .all(|s| matches!(s, LineState::Confirmed))
    {
        let psp_reference = match &saga.payment {
            PaymentState::Authorized { psp_reference } => psp_reference.clone(),
            _ => String::new(),
        };
        saga.payment = PaymentState::CaptureRequested { psp_reference };
        fx.push(Effect::Payment(PaymentCommandBody::Capture(
            CapturePayment {
                amount: saga.total.clone(),
            },
        )));
        transition(saga, Step::Confirmed, None, None, fx);
    }
}

/// Cancels a non-terminal saga: releases every line that is or may be held (or, while waiting
/// for the sale, sold), voids an authorization that is or may be under way, and decides
/// `CANCELLED`.
fn cancel(saga: &mut Saga, reason: Reason, detail: Option<String>, fx: &mut Vec<Effect>) {
    for (sku, state) in saga.line_states.iter_mut() {
        // Requested lines are released too: their hold may land later, and a release before
        // its reserve makes inventory refuse that reserve. Confirming and confirmed lines
        // exist only while waiting for the sale (the saga is not terminal yet): a compensating
        // release after the confirm undoes a sale inventory made.
        if matches!(
            state,
            LineState::Requested
                | LineState::Held { .. }
                | LineState::Confirming
                | LineState::Confirmed
        ) {
            *state = LineState::Released;
            fx.push(release(&saga.order_id, sku, ReleaseReason::Compensation));
        }
    }
    if matches!(
        saga.payment,
        PaymentState::Requested | PaymentState::Authorized { .. }
    ) {
        saga.payment = PaymentState::VoidRequested;
        fx.push(Effect::Payment(PaymentCommandBody::Void(VoidPayment {
            reason: reason.code().to_owned(),
        })));
    }
    transition(saga, Step::Cancelled, Some(reason), detail, fx);
}

fn transition(
    saga: &mut Saga,
    to: Step,
    reason: Option<Reason>,
    detail: Option<String>,
    fx: &mut Vec<Effect>,
) {
    let from = saga.step.status();
    saga.step = to;
    saga.reason = reason;
    saga.detail = detail.clone();
    saga.sequence += 1;
    saga.deadline = None;
    fx.push(Effect::ClearDeadline);
    fx.push(Effect::Decide {
        sequence: saga.sequence,
        status: to.status(),
        from: Some(from),
        reason,
        detail,
    });
}

fn release(order_id: &str, sku: &str, reason: ReleaseReason) -> Effect {
    Effect::Inventory {
        sku: sku.to_owned(),
        command: InventoryCommandBody::Release(ReleaseStock {
            order_id: order_id.to_owned(),
            reason,
        }),
    }
}

fn lines_in(saga: &Saga, pred: impl Fn(&LineState) -> bool) -> Vec<String> {
    saga.line_states
        .iter()
        .filter(|(_, s)| pred(s))
        .map(|(sku, _)| sku.clone())
        .collect()
}
