//! `first_value` / `last_value` with `ORDER BY` over many groups, in time
//! linear in the rows.
//!
//! Survivorship is ordered aggregates: "the email of the person's
//! highest-priority, most recently updated record" is
//! `first_value(email order by priority, updated_at desc)` grouped by
//! person, once per field. DataFusion 55's grouped `first_value` walks every
//! group seen so far for each input batch (its per-batch "extreme of each
//! group" scan), so its time grows with groups × batches: on the starter
//! project at 1M contacts, `dim_people` (7 such fields over 1.2M people)
//! took 24 s and `contact_scores`' first and last touch channels 25 s.
//!
//! [`OrderedPick`] keeps, per group, the winning row's ordering key and
//! value encoded in Arrow's row format (`arrow::row`: keys compare as
//! bytes, in the `ORDER BY`'s directions and null placement), and touches
//! only the groups a batch names. Its partial state is DataFusion's own
//! (value, ordering columns, is-set flag), so plans, spilling and a Ballista
//! cluster see the same aggregate. Without `ORDER BY`, or for a type the
//! row format cannot hold, DataFusion's implementation runs unchanged.
//!
//! `array_agg(x order by ...)[1]` (the same survivorship, as BigQuery and
//! Snowflake users write it) is planned as `first_value(x order by ...)`
//! ([`FirstOfArrayAgg`]) rather than DataFusion's `nth_value`, which keeps
//! every group's whole list: 200k accounts' five such fields took 13 s.
//!
//! Ties keep the row seen first, as DataFusion's grouped version does
//! (which of two tied rows wins depends on the input order either way).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, new_null_array};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{DFSchema, Result, ScalarValue, internal_err};
use datafusion::functions_aggregate::first_last::{first_value_udaf, last_value_udaf};
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawFieldAccessExpr};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    ReversedUDAF, SetMonotonicity, Signature,
};
use datafusion::logical_expr::{Expr, GetFieldAccess};

/// `first_value` (`first: true`) or `last_value`, as DataFusion defines
/// them, with [`OrderedPick`] as the grouped accumulator.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FirstLast {
    inner: AggregateUDF,
    first: bool,
}

impl FirstLast {
    pub fn first_value() -> AggregateUDF {
        AggregateUDF::new_from_impl(Self {
            inner: first_value_udaf().as_ref().clone(),
            first: true,
        })
    }

    pub fn last_value() -> AggregateUDF {
        AggregateUDF::new_from_impl(Self {
            inner: last_value_udaf().as_ref().clone(),
            first: false,
        })
    }

    /// The value's and the orderings' row-format fields, when the
    /// accumulator can run: an `ORDER BY`, and types the row format holds.
    fn fields(args: &AccumulatorArgs) -> Option<(DataType, Vec<DataType>, Vec<SortField>)> {
        if args.order_bys.is_empty() || args.is_distinct {
            return None;
        }
        let value = args.return_field.data_type().clone();
        if has_dictionary(&value) {
            return None;
        }
        let mut types = Vec::with_capacity(args.order_bys.len());
        let mut keys = Vec::with_capacity(args.order_bys.len());
        for o in args.order_bys {
            let t = o.expr.data_type(args.schema).ok()?;
            if has_dictionary(&t) {
                return None;
            }
            keys.push(SortField::new_with_options(t.clone(), o.options));
            types.push(t);
        }
        (RowConverter::supports_fields(&[SortField::new(value.clone())])
            && RowConverter::supports_fields(&keys))
        .then_some((value, types, keys))
    }
}

/// Whether `t` holds a dictionary (or run-end encoding) at any depth: the
/// row format decodes those as plain values, not as the declared type.
fn has_dictionary(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(..) | DataType::RunEndEncoded(..) => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => has_dictionary(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
        DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_dictionary(f.data_type())),
        _ => false,
    }
}

impl AggregateUDFImpl for FirstLast {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.accumulator(args)
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        Self::fields(&args).is_some() || self.inner.groups_accumulator_supported(args)
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        match Self::fields(&args) {
            Some((value, key_types, keys)) => Ok(Box::new(OrderedPick::try_new(
                value,
                key_types,
                keys,
                self.first,
                args.ignore_nulls,
            )?)),
            None => self.inner.create_groups_accumulator(args),
        }
    }
    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.create_sliding_accumulator(args)
    }
    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let inner = Arc::clone(self.inner.inner()).with_beneficial_ordering(beneficial_ordering)?;
        Ok(inner.map(|inner| {
            Arc::new(Self {
                inner: AggregateUDF::new_from_shared_impl(inner),
                first: self.first,
            }) as Arc<dyn AggregateUDFImpl>
        }))
    }
    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }
    fn reverse_expr(&self) -> ReversedUDAF {
        // first_value over the reversed ordering is last_value, and back.
        ReversedUDAF::Reversed(Arc::new(if self.first {
            Self::last_value()
        } else {
            Self::first_value()
        }))
    }
    fn supports_null_handling_clause(&self) -> bool {
        self.inner.inner().supports_null_handling_clause()
    }
    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }
    fn default_value(&self, data_type: &DataType) -> Result<datafusion::common::ScalarValue> {
        self.inner.default_value(data_type)
    }
    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.inner().set_monotonicity(data_type)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// Plans `array_agg(x [order by ...]) [filter (...)][1]` as
/// `first_value(x [order by ...]) [filter (...)]`: the same value (the
/// list's first element, null when no row passes), without keeping lists.
#[derive(Debug, Default)]
pub struct FirstOfArrayAgg;

impl ExprPlanner for FirstOfArrayAgg {
    fn plan_field_access(
        &self,
        expr: RawFieldAccessExpr,
        _schema: &DFSchema,
    ) -> Result<PlannerResult<RawFieldAccessExpr>> {
        let first = match (&expr.expr, &expr.field_access) {
            (
                Expr::AggregateFunction(AggregateFunction { func, params }),
                GetFieldAccess::ListIndex { key },
            ) => {
                func.name() == "array_agg"
                    && !params.distinct
                    && !params.order_by.is_empty()
                    && params.args.len() == 1
                    && matches!(key.as_ref(), Expr::Literal(v, _) if is_one(v))
            }
            _ => false,
        };
        if !first {
            return Ok(PlannerResult::Original(expr));
        }
        let Expr::AggregateFunction(AggregateFunction { params, .. }) = expr.expr else {
            return Ok(PlannerResult::Original(expr));
        };
        let AggregateFunctionParams {
            args,
            distinct,
            filter,
            order_by,
            null_treatment,
        } = params;
        Ok(PlannerResult::Planned(Expr::AggregateFunction(
            AggregateFunction::new_udf(
                Arc::new(FirstLast::first_value()),
                args,
                distinct,
                filter,
                order_by,
                null_treatment,
            ),
        )))
    }
}

fn is_one(v: &ScalarValue) -> bool {
    matches!(
        v,
        ScalarValue::Int8(Some(1))
            | ScalarValue::Int16(Some(1))
            | ScalarValue::Int32(Some(1))
            | ScalarValue::Int64(Some(1))
            | ScalarValue::UInt8(Some(1))
            | ScalarValue::UInt16(Some(1))
            | ScalarValue::UInt32(Some(1))
            | ScalarValue::UInt64(Some(1))
    )
}

/// Per group, the winning row's ordering key and value in row format.
struct OrderedPick {
    first: bool,
    ignore_nulls: bool,
    value_rows: RowConverter,
    key_rows: RowConverter,
    /// The value's data type, for a state or result of no groups.
    value_type: DataType,
    key_types: Vec<DataType>,
    /// Group → the winning row's key (empty: no row yet; an encoded key is
    /// never empty) and value.
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
    /// The bytes `keys` and `values` hold.
    held: usize,
    /// An unset group's value and key: nulls of each type.
    null_value: Vec<u8>,
    null_key: Vec<u8>,
    /// Scratch: group → the row of the current batch that won it (`u32::MAX`
    /// none), and the groups that have one.
    won_by: Vec<u32>,
    won: Vec<usize>,
}

impl OrderedPick {
    fn try_new(
        value_type: DataType,
        key_types: Vec<DataType>,
        keys: Vec<SortField>,
        first: bool,
        ignore_nulls: bool,
    ) -> Result<Self> {
        let value_rows = RowConverter::new(vec![SortField::new(value_type.clone())])?;
        let key_rows = RowConverter::new(keys)?;
        let null_value = value_rows
            .convert_columns(&[new_null_array(&value_type, 1)])?
            .row(0)
            .as_ref()
            .to_vec();
        let nulls: Vec<ArrayRef> = key_types.iter().map(|t| new_null_array(t, 1)).collect();
        let null_key = key_rows.convert_columns(&nulls)?.row(0).as_ref().to_vec();
        Ok(Self {
            first,
            ignore_nulls,
            value_rows,
            key_rows,
            value_type,
            key_types,
            keys: Vec::new(),
            values: Vec::new(),
            held: 0,
            null_value,
            null_key,
            won_by: Vec::new(),
            won: Vec::new(),
        })
    }

    /// Whether `new` beats the group's current key `old`.
    fn beats(&self, new: &[u8], old: &[u8]) -> bool {
        old.is_empty() || if self.first { new < old } else { new > old }
    }

    /// Take the rows of `values` (the value column) whose keys (`keys`,
    /// one per row) beat their group's, where `take(row)` says the row
    /// counts (its filter or is-set flag).
    fn pick(
        &mut self,
        values: &ArrayRef,
        keys: &Rows,
        group_indices: &[usize],
        total_num_groups: usize,
        take: impl Fn(usize) -> bool,
    ) -> Result<()> {
        if self.keys.len() < total_num_groups {
            self.keys.resize_with(total_num_groups, Vec::new);
            self.values.resize_with(total_num_groups, Vec::new);
        }
        if self.won_by.len() < total_num_groups {
            self.won_by.resize(total_num_groups, u32::MAX);
        }
        for (row, &group) in group_indices.iter().enumerate() {
            if !take(row) || (self.ignore_nulls && values.is_null(row)) {
                continue;
            }
            let key = keys.row(row);
            if !self.beats(key.as_ref(), &self.keys[group]) {
                continue;
            }
            let old = &mut self.keys[group];
            self.held = self.held + key.as_ref().len() - old.len();
            old.clear();
            old.extend_from_slice(key.as_ref());
            if self.won_by[group] == u32::MAX {
                self.won.push(group);
            }
            self.won_by[group] = row as u32;
        }
        if self.won.is_empty() {
            return Ok(());
        }
        // Encode only the winning rows' values.
        let rows: Vec<u32> = self.won.iter().map(|&g| self.won_by[g]).collect();
        let taken = datafusion::arrow::compute::take(
            values.as_ref(),
            &datafusion::arrow::array::UInt32Array::from(rows),
            None,
        )?;
        let encoded = self.value_rows.convert_columns(&[taken])?;
        for (i, group) in std::mem::take(&mut self.won).into_iter().enumerate() {
            let new = encoded.row(i);
            let old = &mut self.values[group];
            self.held = self.held + new.as_ref().len() - old.len();
            old.clear();
            old.extend_from_slice(new.as_ref());
            self.won_by[group] = u32::MAX;
        }
        Ok(())
    }

    /// The first `emit_to` groups' keys and values, removed.
    fn take(&mut self, emit_to: EmitTo) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let keys = emit_to.take_needed(&mut self.keys);
        let values = emit_to.take_needed(&mut self.values);
        // Between batches every entry is `u32::MAX`: the group numbers
        // after the emitted ones shift down, so any prefix will do.
        self.won_by.truncate(self.keys.len());
        self.held -= keys.iter().chain(&values).map(Vec::len).sum::<usize>();
        (keys, values)
    }

    fn decode_values(&self, values: &[Vec<u8>]) -> Result<ArrayRef> {
        if values.is_empty() {
            return Ok(new_null_array(&self.value_type, 0));
        }
        let parser = self.value_rows.parser();
        let rows = values
            .iter()
            .map(|v| parser.parse(if v.is_empty() { &self.null_value } else { v }));
        let mut columns = self.value_rows.convert_rows(rows)?;
        match columns.pop() {
            Some(c) => Ok(c),
            None => internal_err!("first_value/last_value: no value column decoded"),
        }
    }
}

impl GroupsAccumulator for OrderedPick {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let Some((value, orderings)) = values.split_first() else {
            return internal_err!("first_value/last_value: no value column");
        };
        let keys = self.key_rows.convert_columns(orderings)?;
        let passes = |row: usize| opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row));
        self.pick(value, &keys, group_indices, total_num_groups, passes)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        // DataFusion's state: value, the ordering columns, is-set.
        let (Some((is_set, rest)), true) = (values.split_last(), values.len() >= 3) else {
            return internal_err!(
                "first_value/last_value: a state of {} columns",
                values.len()
            );
        };
        let Some(is_set) = is_set.as_any().downcast_ref::<BooleanArray>() else {
            return internal_err!("first_value/last_value: the is-set column is not boolean");
        };
        let keys = self.key_rows.convert_columns(&rest[1..])?;
        let set = |row: usize| is_set.is_valid(row) && is_set.value(row);
        self.pick(&rest[0], &keys, group_indices, total_num_groups, set)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let (_, values) = self.take(emit_to);
        self.decode_values(&values)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (keys, values) = self.take(emit_to);
        let is_set = BooleanArray::from_iter(keys.iter().map(|k| Some(!k.is_empty())));
        let mut out = vec![self.decode_values(&values)?];
        if keys.is_empty() {
            out.extend(self.key_types.iter().map(|t| new_null_array(t, 0)));
        } else {
            let parser = self.key_rows.parser();
            let rows = keys
                .iter()
                .map(|k| parser.parse(if k.is_empty() { &self.null_key } else { k }));
            out.extend(self.key_rows.convert_rows(rows)?);
        }
        out.push(Arc::new(is_set));
        Ok(out)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let n = values.first().map_or(0, |v| v.len());
        let is_set = BooleanArray::from_iter((0..n).map(|row| {
            let passes = opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row));
            Some(passes && !(self.ignore_nulls && values[0].is_null(row)))
        }));
        let mut out = values.to_vec();
        out.push(Arc::new(is_set));
        Ok(out)
    }

    fn size(&self) -> usize {
        self.held
            + (self.keys.capacity() + self.values.capacity()) * std::mem::size_of::<Vec<u8>>()
            + self.won_by.capacity() * 4
            + self.value_rows.size()
            + self.key_rows.size()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use proptest::prelude::*;

    use super::*;

    /// Survivorship as models write it: ordered picks with descending
    /// keys, nulls placed either way, FILTER, IGNORE NULLS and the
    /// `array_agg(...)[1]` spelling. `id` is unique, so no two rows tie.
    const QUERY: &str = "select g,
        first_value(v order by a desc nulls last, id) as newest,
        last_value(v order by a, id) as last_by_a,
        first_value(v ignore nulls order by id) as first_known,
        first_value(v order by a nulls first, id) filter (where a > 0) as first_positive,
        (array_agg(v order by a, id desc) filter (where v is not null))[1] as first_listed,
        first_value(a order by v desc, id) as a_of_greatest_v,
        count(*) as n
      from t group by g order by g";

    fn config(skip_partial: bool) -> SessionConfig {
        let mut c = SessionConfig::new()
            .with_target_partitions(3)
            .with_batch_size(5);
        if skip_partial {
            // The partial stage passes rows on as states (convert_to_state).
            let e = &mut c.options_mut().execution;
            e.skip_partial_aggregation_probe_rows_threshold = 1;
            e.skip_partial_aggregation_probe_ratio_threshold = 0.0;
        }
        c
    }

    async fn run(ctx: SessionContext, partitions: Vec<Vec<RecordBatch>>) -> String {
        let schema = partitions[0][0].schema();
        ctx.register_table(
            "t",
            Arc::new(MemTable::try_new(schema, partitions).unwrap()),
        )
        .unwrap();
        let out = ctx.sql(QUERY).await.unwrap().collect().await.unwrap();
        pretty_format_batches(&out).unwrap().to_string()
    }

    fn batches(rows: &[(i64, Option<String>, Option<i64>)]) -> Vec<Vec<RecordBatch>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("g", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
            Field::new("a", DataType::Int64, true),
        ]));
        // Three partitions of batches of up to 4 rows: many batches per group.
        let mut partitions = vec![Vec::new(), Vec::new(), Vec::new()];
        for (i, chunk) in rows.chunks(4).enumerate() {
            let base = i as i64 * 4;
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(
                        (0..chunk.len() as i64).map(|j| base + j),
                    )),
                    Arc::new(Int64Array::from_iter_values(chunk.iter().map(|r| r.0))),
                    Arc::new(StringArray::from_iter(chunk.iter().map(|r| r.1.clone()))),
                    Arc::new(Int64Array::from_iter(chunk.iter().map(|r| r.2))),
                ],
            )
            .unwrap();
            partitions[i % 3].push(batch);
        }
        partitions.retain(|p| !p.is_empty());
        partitions
    }

    fn same_as_datafusion(rows: Vec<(i64, Option<String>, Option<i64>)>, skip_partial: bool) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let parts = batches(&rows);
        // ferry's session: OrderedPick and FirstOfArrayAgg.
        let ferry = super::super::memory_session();
        let ferry = SessionContext::new_with_state(
            datafusion::execution::session_state::SessionStateBuilder::new_from_existing(
                ferry.state(),
            )
            .with_config(config(skip_partial))
            .build(),
        );
        let ours = rt.block_on(run(ferry, parts.clone()));
        let theirs = rt.block_on(run(
            SessionContext::new_with_config(config(skip_partial)),
            parts,
        ));
        assert_eq!(ours, theirs);
    }

    fn row() -> impl Strategy<Value = (i64, Option<String>, Option<i64>)> {
        (
            0i64..12,
            proptest::option::of("[a-c]{0,3}"),
            proptest::option::of(-3i64..4),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn ordered_picks_equal_datafusions_own(rows in proptest::collection::vec(row(), 1..80)) {
            same_as_datafusion(rows.clone(), false);
            same_as_datafusion(rows, true);
        }
    }

    /// Regression (review): the row format gives dictionaries back as plain
    /// values, so a dictionary value or key is left to DataFusion's own
    /// accumulator, and the result keeps its declared type.
    #[tokio::test]
    async fn dictionary_values_and_keys_keep_their_type() {
        let ctx = super::super::memory_session();
        let out = ctx
            .sql(
                "select g, first_value(d order by o) as v, first_value(o order by d desc) as w \
                 from (select g, o, arrow_cast(v, 'Dictionary(Int32, Utf8)') as d \
                 from (values (1, 2, 'b'), (1, 1, 'a'), (2, 5, 'c')) as t(g, o, v)) \
                 group by g order by g",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = pretty_format_batches(&out).unwrap().to_string();
        assert!(text.contains("| 1 | a | 2 |"), "{text}");
        assert!(text.contains("| 2 | c | 5 |"), "{text}");
        assert!(matches!(
            out[0].schema().field(1).data_type(),
            DataType::Dictionary(..)
        ));
    }

    #[tokio::test]
    async fn array_agg_first_element_is_planned_as_first_value() {
        let ctx = super::super::memory_session();
        let plan = ctx
            .sql(
                "explain select (array_agg(x order by y) filter (where x > 0))[1], array_agg(x)[2] \
                 from (values (1, 2), (3, 1)) as t(x, y)",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = pretty_format_batches(&plan).unwrap().to_string();
        assert!(text.contains("first_value(t.x) FILTER"), "{text}");
        // Other elements keep DataFusion's meaning.
        assert!(text.contains("nth_value(t.x,Int64(2))"), "{text}");
    }
}
