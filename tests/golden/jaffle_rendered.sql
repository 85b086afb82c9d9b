-- stg_orders
select
    id as order_id,
    user_id as customer_id,
    order_date,
    status,
    round(cast(amount_cents as double) / 100, 2) as amount
from raw_orders

-- customers
with orders as (
    select
        customer_id,
        count(*) as number_of_orders,
        sum(amount) as lifetime_value
    from stg_orders
    where status in ('completed', 'shipped')
    group by customer_id
)
select
    c.customer_id,
    c.first_name,
    coalesce(o.number_of_orders, 0) as number_of_orders,
    coalesce(o.lifetime_value, 0) as lifetime_value
from stg_customers c
left join orders o on o.customer_id = c.customer_id

