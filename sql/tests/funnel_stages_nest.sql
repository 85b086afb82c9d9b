-- The funnel's stages nest: no stage has more people than the one before.
select source, segment, month, leads, mqls, sqls, opportunities, won
from {{ ref('rpt_funnel') }}
where mqls > leads or sqls > mqls or opportunities > sqls or won > opportunities
