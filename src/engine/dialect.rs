//! Where ferry's SQL follows DuckDB rather than DataFusion's defaults, so a
//! project written for dbt-duckdb gives dbt-duckdb's numbers.
//!
//! **Division.** DuckDB's `/` on two integers is real division
//! (`42 / 100 = 0.42`); DataFusion's truncates (`0`), as PostgreSQL's does.
//! A macro such as `(cents / 100)::numeric(16,2)` would then silently turn
//! every amount under a dollar into 0.00. [`RealDivision`] plans `a / b`
//! with two integer operands as `cast(a as double) / cast(b as double)`,
//! when the SQL is planned, so the result's type is right everywhere
//! downstream; `x / 0` is NULL, as in DuckDB (DataFusion's integer `/`
//! fails on it). For integer division on purpose, write `a // b` (DuckDB's
//! integer division) or `floor(a / b)`. Decimals divide the same way: in
//! DuckDB `decimal / decimal` is a double, in DataFusion a decimal of scale
//! 6, which loses the precision of small ratios (shares of a total).
//!
//! **Power.** DuckDB's (and PostgreSQL's) `a ^ b` is `a` to the power `b`;
//! DataFusion's is a bitwise xor (`2 ^ 3` = 1). ferry plans it as
//! `power(a, b)`, a double.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::error::Result;
use datafusion::functions::core::expr_fn::nullif;
use datafusion::functions::math::expr_fn::power;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Operator, cast, lit};
use datafusion::sql::sqlparser::ast::BinaryOperator;

/// Plans integer `/` integer as real division (see the module docs).
#[derive(Debug, Default)]
pub struct RealDivision;

fn integer(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

fn decimal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

fn double(e: Expr) -> Expr {
    cast(e, DataType::Float64)
}

impl ExprPlanner for RealDivision {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        match expr.op {
            BinaryOperator::Divide => {}
            // DuckDB's `^` is a power (DataFusion's is a bitwise xor).
            BinaryOperator::BitwiseXor | BinaryOperator::PGExp => {
                return Ok(PlannerResult::Planned(power(
                    double(expr.left),
                    double(expr.right),
                )));
            }
            // DuckDB's `//`: integer division (truncating), as DataFusion's `/`
            // on integers.
            BinaryOperator::DuckIntegerDivide | BinaryOperator::MyIntegerDivide => {
                return Ok(PlannerResult::Planned(Expr::BinaryExpr(BinaryExpr::new(
                    Box::new(expr.left),
                    Operator::Divide,
                    Box::new(expr.right),
                ))));
            }
            _ => return Ok(PlannerResult::Original(expr)),
        }
        let (Ok(l), Ok(r)) = (expr.left.get_type(schema), expr.right.get_type(schema)) else {
            return Ok(PlannerResult::Original(expr));
        };
        // Integers and decimals divide as doubles in DuckDB (DataFusion
        // truncates integers and gives decimals a scale of 6 or so).
        let exact = |t: &DataType| integer(t) || decimal(t);
        if !(exact(&l) && exact(&r)) {
            return Ok(PlannerResult::Original(expr));
        }
        // DuckDB: a double, and NULL (not an error, not inf) for x / 0.
        Ok(PlannerResult::Planned(Expr::BinaryExpr(BinaryExpr::new(
            Box::new(double(expr.left)),
            Operator::Divide,
            Box::new(nullif(double(expr.right), lit(0.0_f64))),
        ))))
    }
}

/// The expression planners of every ferry session: ferry's first, then
/// DataFusion's own.
pub fn expr_planners() -> Vec<Arc<dyn ExprPlanner>> {
    let mut planners: Vec<Arc<dyn ExprPlanner>> = vec![
        Arc::new(RealDivision),
        Arc::new(super::first_last::FirstOfArrayAgg),
    ];
    planners.extend(datafusion::execution::SessionStateDefaults::default_expr_planners());
    planners
}
