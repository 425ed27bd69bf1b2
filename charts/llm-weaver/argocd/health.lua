-- Argo CD health of LLM Weaver resources (Channel, ApiKey, RoutingPolicy,
-- NamespacePolicy), from the conditions the operator writes.
local hs = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "The operator has not seen the latest change yet"
  return hs
end
local found = {}
for _, c in ipairs(obj.status.conditions) do
  found[c.type] = c
end
local function says(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end
local ready = found["Ready"]
if ready == nil then
  return hs
end
if ready.status == "False" then
  -- Turned off on purpose: not an error.
  if ready.reason == "Disabled" then
    return { status = "Suspended", message = says(ready) }
  end
  return { status = "Degraded", message = says(ready) }
end
if ready.status ~= "True" then
  return hs
end
for _, t in ipairs({ "Expired", "BudgetExceeded" }) do
  local c = found[t]
  if c ~= nil and c.status == "True" then
    return { status = "Degraded", message = says(c) }
  end
end
local healthy = found["Healthy"]
if healthy ~= nil and healthy.status == "False" then
  return { status = "Degraded", message = says(healthy) }
end
return { status = "Healthy", message = says(healthy or ready) }
