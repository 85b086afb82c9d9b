-- unique: values of {{ column }} that appear on more than one row of {{ model }}.
select {{ column }} as value, count(*) as occurrences
from {{ model }}
where {{ column }} is not null
group by {{ column }}
having count(*) > 1
