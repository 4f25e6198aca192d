"""The routes, one router per resource; `params.include` adds them to an app in this order."""
