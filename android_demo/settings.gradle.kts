// edge-sdk Android demo: loads an `edge-sdk bundle` .litertlm with LiteRT-LM's Android API.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()        // com.google.ai.edge.litertlm:litertlm-android lives on Google Maven
        mavenCentral()
    }
}

rootProject.name = "edge-sdk-demo"
include(":app")
