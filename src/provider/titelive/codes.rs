//! The code lists of Titelive's cart endpoints. `get`, `check` and `confirm` share 0–4 and
//! 10, but confirm numbers the payment codes one lower than check from 22 on, so a code is
//! always read for its own endpoint.

use super::{STATUS_NO_CART, STATUS_NO_SESSION, STATUS_ORDERED, STATUS_VALID};

/// A code of the `check` endpoint (its own list; `get` uses the same numbers for 0–10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckCode {
    /// 0: the cart is valid.
    Valid,
    /// 1: domain code missing or malformed.
    DomainMalformed,
    /// 2: required field empty.
    RequiredFieldEmpty,
    /// 3: required field malformed.
    RequiredFieldMalformed,
    /// 4: there is no session with this token.
    NoSession,
    /// 10: the cart does not exist (get: no cart at this time).
    NoCart,
    /// 11: the cart already became an order.
    AlreadyOrder,
    /// 12: the cart contains no products.
    NoProducts,
    /// 13: the cart does not belong to the shop.
    NotShopsCart,
    /// 14: the cart belongs to an unregistered user and no email address was given.
    NoEmail,
    /// 15: facturation (invoice) address not set.
    InvoiceAddressNotSet,
    /// 16: facturation address does not exist.
    InvoiceAddressUnknown,
    /// 17: delivery type not set.
    DeliveryTypeNotSet,
    /// 18: delivery type does not exist.
    DeliveryTypeUnknown,
    /// 19: delivery address not set.
    DeliveryAddressNotSet,
    /// 20: "facturation address does not exist" says the document again; by its place in the
    /// list it is the delivery address.
    DeliveryAddressUnknown,
    /// 21: delivery in shop set while no shop was selected.
    ShopNotSelected,
    /// 22 (check) : the shop to deliver in does not exist.
    ShopUnknown,
    /// 23 (check), 22 (confirm): payment method not set.
    PaymentMethodNotSet,
    /// 24 (check), 23 (confirm): payment method does not exist.
    PaymentMethodUnknown,
    /// 25 (check): payment in shop needs delivery in shop.
    ShopPaymentNeedsShopDelivery,
    /// 99: uncaught exception on the partner's side.
    Uncaught,
    /// A code the lists do not have.
    Undocumented(i64),
}

/// Which endpoint a code came from; confirm numbers payment codes differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET .../cart/`
    Get,
    /// `GET .../cart/check`
    Check,
    /// `POST .../cart/confirm`
    Confirm,
}

impl CheckCode {
    /// The codes that name a missing or wrong requirement.
    pub const ALL_MISSING: [CheckCode; 14] = [
        CheckCode::NoProducts,
        CheckCode::NotShopsCart,
        CheckCode::NoEmail,
        CheckCode::InvoiceAddressNotSet,
        CheckCode::InvoiceAddressUnknown,
        CheckCode::DeliveryTypeNotSet,
        CheckCode::DeliveryTypeUnknown,
        CheckCode::DeliveryAddressNotSet,
        CheckCode::DeliveryAddressUnknown,
        CheckCode::ShopNotSelected,
        CheckCode::ShopUnknown,
        CheckCode::PaymentMethodNotSet,
        CheckCode::PaymentMethodUnknown,
        CheckCode::ShopPaymentNeedsShopDelivery,
    ];

    /// Reads a code as the list of `endpoint` defines it.
    pub fn from_number(endpoint: Endpoint, code: i64) -> CheckCode {
        match (endpoint, code) {
            (_, 0) => CheckCode::Valid,
            (_, 1) => CheckCode::DomainMalformed,
            (_, 2) => CheckCode::RequiredFieldEmpty,
            (_, 3) => CheckCode::RequiredFieldMalformed,
            (_, 4) => CheckCode::NoSession,
            (_, 10) => CheckCode::NoCart,
            (Endpoint::Get, other) => CheckCode::Undocumented(other),
            (_, 11) => CheckCode::AlreadyOrder,
            (_, 12) => CheckCode::NoProducts,
            (_, 13) => CheckCode::NotShopsCart,
            (_, 14) => CheckCode::NoEmail,
            (_, 15) => CheckCode::InvoiceAddressNotSet,
            (_, 16) => CheckCode::InvoiceAddressUnknown,
            (_, 17) => CheckCode::DeliveryTypeNotSet,
            (_, 18) => CheckCode::DeliveryTypeUnknown,
            (_, 19) => CheckCode::DeliveryAddressNotSet,
            (_, 20) => CheckCode::DeliveryAddressUnknown,
            (_, 21) => CheckCode::ShopNotSelected,
            (Endpoint::Check, 22) => CheckCode::ShopUnknown,
            (Endpoint::Check, 23) | (Endpoint::Confirm, 22) => CheckCode::PaymentMethodNotSet,
            (Endpoint::Check, 24) | (Endpoint::Confirm, 23) => CheckCode::PaymentMethodUnknown,
            (Endpoint::Check, 25) => CheckCode::ShopPaymentNeedsShopDelivery,
            (_, 99) => CheckCode::Uncaught,
            (_, other) => CheckCode::Undocumented(other),
        }
    }

    /// The status a cart has when `check` answers this code; `None` for codes about the
    /// request rather than the cart.
    pub fn status(self) -> Option<&'static str> {
        Some(match self {
            CheckCode::Valid => STATUS_VALID,
            CheckCode::NoSession => STATUS_NO_SESSION,
            CheckCode::NoCart => STATUS_NO_CART,
            CheckCode::AlreadyOrder => STATUS_ORDERED,
            CheckCode::NoProducts => "NoProducts",
            CheckCode::NotShopsCart => "NotShopsCart",
            CheckCode::NoEmail => "NoEmail",
            CheckCode::InvoiceAddressNotSet => "NoInvoiceAddress",
            CheckCode::InvoiceAddressUnknown => "UnknownInvoiceAddress",
            CheckCode::DeliveryTypeNotSet => "NoDeliveryType",
            CheckCode::DeliveryTypeUnknown => "UnknownDeliveryType",
            CheckCode::DeliveryAddressNotSet => "NoDeliveryAddress",
            CheckCode::DeliveryAddressUnknown => "UnknownDeliveryAddress",
            CheckCode::ShopNotSelected => "NoShopSelected",
            CheckCode::ShopUnknown => "UnknownShop",
            CheckCode::PaymentMethodNotSet => "NoPaymentMethod",
            CheckCode::PaymentMethodUnknown => "UnknownPaymentMethod",
            CheckCode::ShopPaymentNeedsShopDelivery => "ShopPaymentNeedsShopDelivery",
            CheckCode::DomainMalformed
            | CheckCode::RequiredFieldEmpty
            | CheckCode::RequiredFieldMalformed
            | CheckCode::Uncaught
            | CheckCode::Undocumented(_) => {
                return None;
            }
        })
    }

    /// What the code means, for people.
    pub fn describe(self) -> String {
        match self {
            CheckCode::Valid => "the cart is valid".into(),
            CheckCode::DomainMalformed => "domain code missing or malformed (1)".into(),
            CheckCode::RequiredFieldEmpty => "a required field is empty (2)".into(),
            CheckCode::RequiredFieldMalformed => "a required field is malformed (3)".into(),
            CheckCode::NoSession => "there is no session with this token (4)".into(),
            CheckCode::NoCart => "there is no cart (10)".into(),
            CheckCode::AlreadyOrder => "the cart already became an order (11)".into(),
            CheckCode::NoProducts => "the cart contains no products (12)".into(),
            CheckCode::NotShopsCart => "the cart does not belong to the shop (13)".into(),
            CheckCode::NoEmail => "the cart belongs to an unregistered user and no email address was given (14)".into(),
            CheckCode::InvoiceAddressNotSet => "the invoice address is not set (15)".into(),
            CheckCode::InvoiceAddressUnknown => "the invoice address does not exist (16)".into(),
            CheckCode::DeliveryTypeNotSet => "the delivery type is not set (17)".into(),
            CheckCode::DeliveryTypeUnknown => "the delivery type does not exist (18)".into(),
            CheckCode::DeliveryAddressNotSet => "the delivery address is not set (19)".into(),
            CheckCode::DeliveryAddressUnknown => "the delivery address does not exist (20)".into(),
            CheckCode::ShopNotSelected => "delivery in shop is set but no shop was selected (21)".into(),
            CheckCode::ShopUnknown => "the shop to deliver in does not exist".into(),
            CheckCode::PaymentMethodNotSet => "the payment method is not set".into(),
            CheckCode::PaymentMethodUnknown => "the payment method does not exist".into(),
            CheckCode::ShopPaymentNeedsShopDelivery => "payment in shop needs delivery in shop (25)".into(),
            CheckCode::Uncaught => "uncaught exception on the partner's side (99)".into(),
            CheckCode::Undocumented(code) => format!("undocumented code {code}"),
        }
    }
}
